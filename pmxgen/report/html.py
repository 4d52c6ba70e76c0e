"""The diagnostics report: one self-contained HTML file (figures embedded as PNG) plus CSV tables.

Sections: run information, data summary, status checklist, parameter table (estimate, SE,
RSE %, 95 % CI, shrinkage), simulation diagnostics (NPDE tests, shrinkage, VPC coverage), the
one-step-ahead predictive log-likelihood (total, its Monte Carlo SE, beside the importance-sampling
log-likelihood of the fit, and per subject; per observation in the residual table) and
the figures of :meth:`pmxgen.diagnostics.Diagnostics.figures`. The page loads nothing from
outside itself (no scripts, fonts or links), so it can be mailed or archived as it is.

Every figure carries alt text (its section and what each panel plots, from the panels' titles
and axis labels) and a numbered caption that says in words what it shows, with the quantities
named and spelled out (DV, PRED, IPRED, CWRES, IWRES, NPDE, EBE, VPC, pcVPC), so the page is
readable without the images. The parameter table shows Ω diagonal elements also as %CV
(``cv_percent``, exact for log-normal η: ``100·√(exp(ω²) − 1)``; see
:mod:`pmxgen.estimation.variability`). CWRES are NONMEM's (symmetric whitening, see
:mod:`pmxgen.diagnostics.residuals`); NPDE the npde package's (Cholesky decorrelation).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import re
from pathlib import Path

import pandas as pd

__all__ = ["render_html", "write_report", "write_tables", "describe_figure", "SECTIONS", "DESCRIPTIONS"]

#: Ids and titles of the fixed sections of the report, in order.
SECTIONS = (("run", "Run information"), ("data", "Data summary"), ("status", "Status checklist"),
            ("parameters", "Parameter estimates"), ("diagnostics", "Simulation diagnostics"),
            ("figures", "Figures"))

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#1b1b1b;padding:0 1em}
h1{border-bottom:2px solid #1f4e79;padding-bottom:.2em}h2{color:#1f4e79;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#eef3f8}td:first-child,th:first-child,td.text{text-align:left}
.ok{color:#1e7b34;font-weight:bold}.flag{color:#b3261e;font-weight:bold}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
nav a{margin-right:1em}.note{color:#555;font-size:.9em}
"""


#: What each figure section shows (a note under its heading).
NOTES = {
    "Goodness of fit": "Dashed: identity or zero line; orange: LOWESS smoother (statsmodels); dotted: ±1.96.",
    "Residuals and NPDE": "NPDE from the simulated replicates (decorrelated, Brendel 2006); under the model N(0, 1).",
    "Random effects": "EBE histograms with the N(0, ω²) density of the model.",
    "Visual predictive check": "Lines with points: observed 5th, 50th and 95th percentiles per time bin; dashed "
                               "lines and bands: median and 95 % interval of the same percentiles over the "
                               "simulated replicates.",
    "Prediction-corrected VPC": "As the VPC, with observations and simulations multiplied by median(PRED in "
                                "bin)/PRED (Bergstrand 2011).",
    "Individual fits": "Points: observations; red: individual predictions (IPRED); green dashed: population "
                       "predictions (PRED).",
    "Convergence": "Parameter values (Ω, σ as variances) and objective over the iterations of the estimator.",
}


#: What each figure section shows, in words (the caption under each of its figures).
DESCRIPTIONS = {
    "Goodness of fit": "Observations (DV) against population predictions (PRED, η = 0) and individual "
                       "predictions (IPRED, at the EBEs); conditional weighted residuals (CWRES, NONMEM's "
                       "definition) against time and against PRED. CWRES should scatter evenly around 0, "
                       "mostly within ±1.96.",
    "Residuals and NPDE": "Absolute individual weighted residuals (|IWRES|) against IPRED; normal QQ plots of the "
                          "conditional weighted residuals (CWRES) and of the normalised prediction distribution "
                          "errors (NPDE); NPDE against time. Under the model CWRES and NPDE are about N(0, 1) and "
                          "the QQ points lie on the identity line.",
    "Random effects": "Histograms of the empirical Bayes estimates (EBEs) of each random effect η, with the "
                      "N(0, ω²) density of the model.",
    "Random effects vs covariates": "EBEs of each random effect η against each baseline covariate; a trend "
                                    "suggests a covariate effect not in the model.",
    "Visual predictive check": "Visual predictive check (VPC): observed 5th, 50th and 95th percentiles of DV "
                               "per time bin against the median and 95 % interval of the same percentiles over "
                               "the simulated replicates.",
    "Prediction-corrected VPC": "Prediction-corrected visual predictive check (pcVPC): as the VPC, with "
                                "observations and simulations scaled by median(PRED in bin)/PRED.",
    "Individual fits": "Observations (DV), individual predictions (IPRED) and population predictions (PRED) "
                       "against time, one panel per subject.",
    "Convergence": "Objective function value (OFV) and parameter values over the iterations of the estimator.",
}


def _panel(ax) -> str | None:
    """What one axes plots: its title (with '(Y vs X)' when the title does not name Y), else 'Y vs X'
    (histograms: 'histogram of X')."""
    if not ax.get_visible() or not ax.has_data():
        return None
    title, x, y = ax.get_title().strip(), ax.get_xlabel().strip(), ax.get_ylabel().strip()
    if title:
        return f"{title} ({y} vs {x})" if x and y and y not in title else title
    if y == "density" and x:
        return f"histogram of {x}"
    if x and y:
        return f"{y} vs {x}"
    return x or y or None


def describe_figure(name: str, fig, page: str = "") -> tuple[str, str]:
    """(alt text, caption) of a report figure of section ``name``.

    The alt text lists the panels (titles, or axis labels); the caption says in words what the
    section's figures show (:data:`DESCRIPTIONS`).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> fig, axes = plt.subplots(1, 2)
    >>> _ = axes[0].plot([0, 1], [1, 0]), axes[0].set_title("CWRES vs time")
    >>> _ = axes[1].hist([0.1, 0.2]), axes[1].set_xlabel("ETA(CL)"), axes[1].set_ylabel("density")
    >>> alt, caption = describe_figure("Goodness of fit", fig)
    >>> alt
    'Goodness of fit: CWRES vs time; histogram of ETA(CL)'
    >>> caption.startswith("Goodness of fit. Observations (DV) against population predictions")
    True
    >>> plt.close(fig)
    """
    panels = [p for p in (_panel(ax) for ax in fig.axes) if p]
    head = f"{name}{page}"
    alt = f"{head}: {'; '.join(panels)}" if panels else head
    caption = f"{head}. {DESCRIPTIONS.get(name, '')}".strip()
    return alt, caption


def _number(v) -> str:
    if isinstance(v, (bool,)):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.5g}"
    return str(v)


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, na_rep="–", float_format=lambda v: f"{v:.5g}", escape=True)


def _dl(items: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_number(v))}</td></tr>"
                   for k, v in items.items())
    return f"<table>{rows}</table>"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _image(fig, alt: str, dpi: int) -> str:
    from ..diagnostics.plotting import figure_png
    data = base64.b64encode(figure_png(fig, dpi=dpi)).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _run_information(diag) -> dict:
    import pmxgen
    fit = diag.fit
    return {"model": fit.model_name, "method": fit.method.upper(), "data": fit.data_source,
            "report created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "pmxgen version": pmxgen.__version__, "estimation time (s)": float(fit.elapsed_seconds),
            "OFV (NONMEM)": float(fit.ofv), "-2LL": float(fit.minus2ll), "AIC": float(fit.aic),
            "BIC": float(fit.bic), "covariance step": f"{fit.covariance_status} ({fit.covariance_method})",
            "simulated replicates": f"{diag.n_simulations} (seed {diag.seed})"}


def _checklist(fit) -> str:
    rows = []
    for item, ok, detail in fit.checklist():
        mark = '<span class="ok">OK</span>' if ok else '<span class="flag">CHECK</span>'
        rows.append(f"<tr><td>{mark}</td><td class='text'>{html.escape(item)}</td><td class='text'>"
                    f"{html.escape(detail)}</td></tr>")
    messages = "".join(f"<li>{html.escape(m)}</li>" for m in fit.messages)
    return (f"<table><tr><th>status</th><th>item</th><th>detail</th></tr>{''.join(rows)}</table>"
            + (f"<p class='note'>Messages:</p><ul>{messages}</ul>" if messages else ""))


def _diagnostics_section(diag) -> str:
    tests = pd.DataFrame([{"": k.upper(), **diag.npde_tests(k)} for k in ("npde", "npd")])
    parts = ["<h3>NPDE and NPD</h3>",
             f"<p class='note'>Tests of N(0, 1) (npde package; KS: Kolmogorov–Smirnov) over "
             f"{diag.n_simulations} simulated replicates of the design at the estimates.</p>", _table(tests)]
    if diag.npde.n_blq:
        parts.append(f"<p class='note'>{diag.npde.n_blq} BLQ observations have no NPDE/NPD.</p>")
    if diag.npde.failed:
        parts.append(f"<p class='note'>Decorrelation failed for {len(diag.npde.failed)} subjects (NaN NPDE).</p>")
    parts += ["<h3>Shrinkage (SD-based, %)</h3>",
              _dl({k: 100.0 * v for k, v in diag.shrinkage.items()})]
    rows = []
    for label, result in (("VPC", diag.vpc), ("pcVPC", diag.pcvpc)):
        if result is not None:
            rows.append({"check": label, "bins": len(result.table), "interval %": 100 * result.interval,
                         "observed percentiles inside %": 100 * result.coverage(),
                         "observations left out": result.n_excluded})
    if rows:
        parts += ["<h3>Predictive checks</h3>", _table(pd.DataFrame(rows))]
    parts.append(_one_step_ahead_section(diag))
    return "".join(parts)


def _one_step_ahead_section(diag) -> str:
    """Total and per-subject one-step-ahead predictive log-likelihoods, or why there are none."""
    osa = getattr(diag, "one_step_ahead", None)
    head = "<h3 id='one-step-ahead'>One-step-ahead predictive log-likelihood</h3>"
    if osa is None:
        reason = diag.options.get("one_step_ahead", "not computed")
        return head + f"<p class='note'>One-step-ahead log-likelihoods: {html.escape(str(reason))}</p>"
    items = {"total log p(y_j | y_<j) over observations": osa.total, "Monte Carlo SE": osa.se,
             "-2 × total": osa.minus2ll, "method": osa.method, "draws per subject": osa.n_samples,
             "smallest effective sample size": osa.min_ess}
    imp = diag.fit.importance_sampling
    if imp:
        items["-2LL by importance sampling of the fit"] = float(imp["minus2ll"])
        items["its Monte Carlo SE"] = float(imp["se"])
    note = ("<p class='note'>Each observation's log density given the subject's earlier observations and doses, "
            "log p(y_j | y_&lt;j) = log p(y_≤j) − log p(y_&lt;j), by importance sampling of η (one set of draws for "
            "all prefixes; per observation: OSA_LOGLIK, OSA_SE in the residual table). Summed, it is the marginal "
            "log-likelihood: −2 × total estimates the −2LL, within the Monte Carlo errors. Low values single out "
            "observations the model did not predict from the subject's history.</p>")
    return head + note + _dl(items) + _table(osa.subjects)


def render_html(diag, *, title: str | None = None, per_page: int = 12, dpi: int = 90) -> str:
    """The report of a :class:`~pmxgen.diagnostics.Diagnostics` as one HTML string (figures embedded)."""
    fit = diag.fit
    title = title or f"pmxgen report: {fit.model_name}"
    figures = diag.figures(per_page=per_page)
    nav = "".join(f'<a href="#{sid}">{html.escape(name)}</a>' for sid, name in SECTIONS)
    body = [f"<h1>{html.escape(title)}</h1>", f"<nav>{nav}</nav>",
            '<section id="run"><h2>Run information</h2>', _dl(_run_information(diag)), "</section>",
            '<section id="data"><h2>Data summary</h2>', _dl(diag.data_summary()), "</section>",
            '<section id="status"><h2>Status checklist</h2>', _checklist(fit), "</section>",
            '<section id="parameters"><h2>Parameter estimates</h2>',
            "<p class='note'>Ω and σ as variances; 95 % CI = estimate ± 1.96 SE; shrinkage SD-based.</p>",
            _table(diag.parameter_table()),
            "<p class='note' id='cv-note'>cv_percent (%CV): Ω diagonal elements ω² as the coefficient of "
            "variation of a log-normal individual parameter P = θ·exp(η), %CV = 100·√(exp(ω²) − 1) (exact; the "
            "common approximation 100·ω is lower, e.g. 30 % instead of 30.7 % for ω² = 0.09). Not defined for θ, "
            "σ and Ω covariances; does not apply to an η that enters a custom model otherwise than "
            "exponentially.</p>", "</section>",
            '<section id="diagnostics"><h2>Simulation diagnostics</h2>', _diagnostics_section(diag), "</section>",
            '<section id="figures"><h2>Figures</h2>']
    number = 0
    for name, figs in figures.items():
        body.append(f'<section id="fig-{_slug(name)}" class="figure-section"><h3>{html.escape(name)}</h3>')
        if name in NOTES:
            body.append(f"<p class='note'>{html.escape(NOTES[name])}</p>")
        for k, fig in enumerate(figs):
            number += 1
            alt, caption = describe_figure(name, fig, "" if len(figs) == 1 else f", page {k + 1} of {len(figs)}")
            body.append(f"<figure>{_image(fig, alt, dpi)}<figcaption>Figure {number}. "
                        f"{html.escape(caption)}</figcaption></figure>")
        body.append("</section>")
    body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<link rel='icon' href='data:,'><title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def write_tables(diag, directory: str | Path, prefix: str = "report") -> list[Path]:
    """Write every table of :meth:`Diagnostics.tables` as ``{prefix}_{name}.csv``; returns the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in diag.tables().items():
        path = out / f"{prefix}_{name}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def write_report(source, output: str | Path = "report.html", *, n_simulations: int = 500, seed: int | None = 0,
                 bins=None, stratify: str | None = None, pred_corr: bool | None = None, tables: bool = True,
                 per_page: int = 12, title: str | None = None, model=None, data=None) -> list[Path]:
    """Write the HTML report of a fit (and its tables as CSV next to it); returns the paths, HTML first.

    Parameters
    ----------
    source : Diagnostics, FitResult, Run or results folder
        A FitResult or folder is reloaded (:func:`pmxgen.load_run`) and diagnosed
        (:func:`pmxgen.diagnostics.diagnose` with ``n_simulations``, ``seed``, ``bins``,
        ``stratify`` and ``pred_corr``).
    output : path
        The HTML file; CSV tables go next to it as ``<stem>_<table>.csv``.
    tables : bool
        Whether to write the CSV tables.
    per_page : int
        Subjects per page of individual fits.
    title : str, optional
    model, data : optional
        Passed to :func:`pmxgen.load_run`.

    Examples
    --------
    >>> import pmxgen, tempfile, pathlib
    >>> data = pmxgen.datasets.load("theophylline")
    >>> fit = pmxgen.fit(pmxgen.build_model("1cmt_oral", data, error="additive", iiv=("KA", "CL")), data,
    ...                  method="foce", covariance=None)
    >>> paths = pmxgen.report(fit, pathlib.Path(tempfile.mkdtemp()) / "report.html", n_simulations=100)
    >>> paths[0].name, "Parameter estimates" in paths[0].read_text()
    ('report.html', True)
    """
    from ..diagnostics.diagnose import Diagnostics, diagnose
    diag = source if isinstance(source, Diagnostics) else diagnose(
        source, n_simulations=n_simulations, seed=seed, bins=bins, stratify=stratify, pred_corr=pred_corr,
        model=model, data=data)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_html(diag, title=title, per_page=per_page), encoding="utf-8")
    paths = [output]
    if tables:
        paths += write_tables(diag, output.parent, prefix=output.stem)
    return paths

"""The HTML comparison report of generators: one self-contained page (figures inline as PNG).

Made from a :class:`~pmxgen.generative.comparison.GeneratorComparison`
(:func:`~pmxgen.generative.comparison.compare_generators`). Sections: data and settings; the
metrics table with fit and sampling wall times (and the metrics explained); the check against
the multivariate normal baseline (when ``mvn`` is among the models); pairwise scatter plots of
held-out real rows against generated rows for chosen columns; marginal histograms (level
shares for discrete columns); correlation heatmaps on the common encoding of the metrics. The
house style, figure helpers and alt text are those of the fit report (:mod:`pmxgen.report.html`).

Examples
--------
>>> import numpy as np, pandas as pd, tempfile, pathlib
>>> from pmxgen.generative.comparison import compare_generators
>>> rng = np.random.default_rng(0)
>>> data = pd.DataFrame({"WT": rng.lognormal(4.2, 0.2, 120), "SEX": rng.integers(1, 3, 120)})
>>> result = compare_generators(data, ["mvn"], n=100, metrics={"n_permutations": 20, "c2st_epochs": 20})
>>> paths = write_generator_report(result, pathlib.Path(tempfile.mkdtemp()) / "generators.html", dpi=40)
>>> text = paths[0].read_text()
>>> "Pairwise scatter" in text, text.count("data:image/png;base64,") >= 2, paths[1].suffix
(True, True, '.csv')
"""
from __future__ import annotations

import datetime as _dt
import html
import itertools
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .html import _CSS, _dl, _image, _slug, _table, describe_figure

__all__ = ["render_generator_report", "write_generator_report", "comparison_figures", "GENERATOR_SECTIONS"]

#: Ids and titles of the sections of the generator report, in order.
GENERATOR_SECTIONS = (("settings", "Data and settings"), ("metrics", "Metrics"), ("baseline", "Against the baseline"),
                      ("scatter", "Pairwise scatter"), ("marginals", "Marginal histograms"),
                      ("correlations", "Correlation heatmaps"))

REAL, GENERATED = "#1f4e79", "#e67e22"

#: The caption of each figure section.
CAPTIONS = {
    "Pairwise scatter": "Held-out real rows (blue) and generated rows (orange) for pairs of the chosen columns; a "
                        "good generator covers the same region with the same shape (correlation, skew, bounds).",
    "Marginal histograms": "Density histograms of each column, held-out real rows (blue) against generated rows "
                           "(orange); discrete columns as the share of each level.",
    "Correlation heatmaps": "Pearson correlation matrices on the common encoding of the metrics (continuous columns "
                            "standardised by the real scale, discrete columns as 0/1 indicators), held-out real rows "
                            "first, then each generator.",
}


def _discrete(frame: pd.DataFrame) -> list[str]:
    out = []
    for name in frame.columns:
        v = frame[name]
        numeric = pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v)
        if not numeric or v.nunique() <= 2:
            out.append(name)
    return out


def _chosen(frame: pd.DataFrame, columns: Sequence[str] | None, max_columns: int = 4) -> list[str]:
    if columns is not None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            from ..errors import DatasetError
            raise DatasetError(f"columns {missing} are not in the data", fix=f"choose among {list(frame.columns)}")
        return list(columns)
    discrete = set(_discrete(frame))
    return [c for c in frame.columns if c not in discrete][:max_columns]


def _thin(frame: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    if len(frame) <= size:
        return frame
    return frame.iloc[np.random.default_rng(seed).permutation(len(frame))[:size]]


def _scatter_figure(real: pd.DataFrame, sample: pd.DataFrame, columns: list[str], model: str, seed: int):
    from ..diagnostics.plotting import grid_shape, new_figure
    pairs = list(itertools.combinations(columns, 2))
    rows, cols = grid_shape(len(pairs), 3)
    fig, axes = new_figure(rows, cols, panel=(3.6, 3.0))
    sample = _thin(sample, max(len(real), 1000), seed)
    for ax, (a, b) in zip(axes.flat, pairs):
        ax.scatter(sample[a], sample[b], s=6, alpha=0.35, color=GENERATED, edgecolors="none", label=model)
        ax.scatter(real[a], real[b], s=8, alpha=0.7, color=REAL, edgecolors="none", label="real (held out)")
        ax.set_xlabel(str(a))
        ax.set_ylabel(str(b))
        ax.set_title(f"{model}: {b} vs {a}", fontsize=9)
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="best")
    return fig


def _marginal_figure(real: pd.DataFrame, sample: pd.DataFrame, model: str, discrete: set):
    from ..diagnostics.plotting import grid_shape, new_figure
    names = list(real.columns)
    rows, cols = grid_shape(len(names), 4)
    fig, axes = new_figure(rows, cols, panel=(3.0, 2.4))
    for ax, name in zip(axes.flat, names):
        if name in discrete:
            levels = sorted(set(real[name]).union(sample[name]), key=lambda v: (str(type(v)), v))
            pos = np.arange(len(levels))
            for shift, frame, colour, label in ((-0.2, real, REAL, "real"), (0.2, sample, GENERATED, model)):
                shares = [(frame[name] == v).mean() for v in levels]
                ax.bar(pos + shift, shares, width=0.4, color=colour, label=label)
            ax.set_xticks(pos, [str(v) for v in levels])
            ax.set_ylabel("share")
        else:
            values = np.concatenate([real[name].to_numpy(float), sample[name].to_numpy(float)])
            edges = np.histogram_bin_edges(values, bins=30)
            ax.hist(sample[name].to_numpy(float), bins=edges, density=True, alpha=0.5, color=GENERATED, label=model)
            ax.hist(real[name].to_numpy(float), bins=edges, density=True, histtype="step", lw=1.5, color=REAL,
                    label="real")
            ax.set_ylabel("density")
        ax.set_xlabel(str(name))
        ax.set_title(f"{model}: {name}", fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="best")
    return fig


def _correlation_figure(real: pd.DataFrame, samples: dict, categorical: Sequence[str]):
    from ..diagnostics.plotting import grid_shape, new_figure
    from ..generative.metrics import TableEncoding, _correlation
    pooled = pd.concat([real, *samples.values()], ignore_index=True) if samples else None
    enc = TableEncoding.fit(real, pooled, categorical=categorical)
    panels = [("real (held out)", real), *samples.items()]
    rows, cols = grid_shape(len(panels), 3)
    size = max(3.2, 0.35 * len(enc.features) + 1.5)
    fig, axes = new_figure(rows, cols, panel=(size, size * 0.85))
    labels = enc.features
    for ax, (name, frame) in zip(axes.flat, panels):
        corr = _correlation(enc.encode(frame)).numpy()
        image = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(f"correlations: {name}", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes.flat)[:len(panels)], shrink=0.8, label="Pearson correlation")
    return fig


def comparison_figures(comparison, *, columns: Sequence[str] | None = None, seed: int | None = None) -> dict:
    """The report's figures: ``{section title: [matplotlib Figure, ...]}``.

    Pairwise scatter (one figure per model over the pairs of ``columns``, default the first four
    continuous columns; none with fewer than two), marginal histograms (one figure per model),
    correlation heatmaps (one figure, real first).
    """
    real = comparison.test
    seed = comparison.settings.get("seed", 0) if seed is None else seed
    chosen = _chosen(real, columns)
    discrete = set(_discrete(real)) | set(comparison.settings.get("categorical") or [])
    out: dict[str, list] = {"Pairwise scatter": [], "Marginal histograms": [], "Correlation heatmaps": []}
    for model, sample in comparison.samples.items():
        if len(chosen) >= 2:
            out["Pairwise scatter"].append(_scatter_figure(real, sample, chosen, model, seed))
        out["Marginal histograms"].append(_marginal_figure(real, sample, model, discrete))
    out["Correlation heatmaps"].append(_correlation_figure(real, comparison.samples,
                                                           list(comparison.settings.get("categorical") or [])))
    return out


def _baseline_section(table: pd.DataFrame) -> str:
    from ..generative.comparison import baseline_check
    if "mvn" not in set(table["model"]) or (table["model"] == "mvn").sum() != 1:
        return "<p class='note'>The multivariate normal baseline (mvn) is not among the models.</p>"
    check = baseline_check(table)
    if check.empty:
        return "<p class='note'>No model other than the baseline.</p>"
    note = ("<p class='note'>A model beats the multivariate normal baseline (mvn) on the classifier two-sample "
            "test when its accuracy is closer to 0.5, and on correlation error when its error is smaller. This is "
            "one split: differences smaller than the gap between the reference row (train split), when present, "
            "and a perfect score are within the noise of the held-out rows; "
            "benchmarks/gen_diabetes_comparison.py averages paired differences over several splits.</p>")
    return note + _table(check)


def render_generator_report(comparison, *, columns: Sequence[str] | None = None, title: str | None = None,
                            dpi: int = 80) -> str:
    """The comparison report as one HTML string (see the module docstring)."""
    from ..generative.metrics import METRIC_DESCRIPTIONS
    import pmxgen
    settings = comparison.settings
    title = title or f"pmxgen generator comparison: {settings.get('source', '<data>')}"
    table = comparison.table
    info = {"data": settings.get("source", "<data>"), "columns": ", ".join(map(str, comparison.test.columns)),
            "rows (train / held out)": f"{settings.get('n_train')} / {settings.get('n_test')}",
            "generated rows per model": settings.get("n"), "seed": settings.get("seed"),
            "conditions": ", ".join(settings.get("conditions") or []) or "none",
            "models": ", ".join(map(str, table["model"])),
            "report created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "pmxgen version": pmxgen.__version__}
    shown = table.drop(columns=["message"])
    messages = "".join(f"<li><b>{html.escape(str(r.model))}</b> ({html.escape(str(r.status))}): "
                       f"{html.escape(str(r.message))}</li>" for r in table.itertuples())
    glossary = {"fit_time_s": "wall time of fit on the train split (s)",
                "sample_time_s": "wall time of drawing the generated rows (s)", **METRIC_DESCRIPTIONS}
    nav = "".join(f'<a href="#{sid}">{html.escape(name)}</a>' for sid, name in GENERATOR_SECTIONS)
    body = [f"<h1>{html.escape(title)}</h1>", f"<nav>{nav}</nav>",
            '<section id="settings"><h2>Data and settings</h2>', _dl(info), "</section>",
            '<section id="metrics"><h2>Metrics</h2>',
            "<p class='note'>Each generator is fitted on the train split and its generated rows are compared with "
            "the held-out rows. Lower is better for distances and errors; 0.5 is best for the classifier "
            "accuracy and AUC.</p>", _table(shown), f"<ul class='note'>{messages}</ul>",
            "<h3>What the columns mean</h3>", _dl(glossary), "</section>",
            '<section id="baseline"><h2>Against the baseline</h2>', _baseline_section(table), "</section>"]
    number = 0
    figures = comparison_figures(comparison, columns=columns)
    ids = {"Pairwise scatter": "scatter", "Marginal histograms": "marginals", "Correlation heatmaps": "correlations"}
    for name, figs in figures.items():
        body.append(f'<section id="{ids[name]}" class="figure-section"><h2>{html.escape(name)}</h2>')
        if not figs:
            body.append("<p class='note'>Fewer than two continuous columns (or no generated rows): no figure.</p>")
        for fig in figs:
            number += 1
            alt, _ = describe_figure(name, fig)
            body.append(f"<figure id='fig-{_slug(name)}-{number}'>{_image(fig, alt, dpi)}<figcaption>Figure "
                        f"{number}. {html.escape(CAPTIONS[name])}</figcaption></figure>")
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<link rel='icon' href='data:,'><title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def write_generator_report(comparison, output: str | Path = "generators.html", *,
                           columns: Sequence[str] | None = None, title: str | None = None,
                           table: bool = True, dpi: int = 80) -> list[Path]:
    """Write the HTML report (and the metrics table as ``<stem>_metrics.csv`` next to it); returns the paths."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_generator_report(comparison, columns=columns, title=title, dpi=dpi), encoding="utf-8")
    paths = [output]
    if table:
        csv = output.with_name(f"{output.stem}_metrics.csv")
        comparison.table.to_csv(csv, index=False)
        paths.append(csv)
    return paths

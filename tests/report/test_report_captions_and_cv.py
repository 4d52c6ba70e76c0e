"""The report reads without its images (alt text and captions name what each figure shows), and
Ω is shown as %CV (exact log-normal formula) in the report and in FitResult.summary()."""
import math
from html.parser import HTMLParser

import numpy as np
import pandas as pd

from pmxgen.estimation.variability import lognormal_cv_percent, with_cv_percent


class _Figures(HTMLParser):
    """(alt text, caption) of every <figure>, and the page text outside image sources."""

    def __init__(self):
        super().__init__()
        self.figures, self.text, self._caption, self._alt = [], [], None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self._alt = None
        if tag == "img":
            self._alt = a.get("alt")
        if tag == "figcaption":
            self._caption = ""

    def handle_data(self, data):
        self.text.append(data)
        if self._caption is not None:
            self._caption += data

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self.figures.append((self._alt, self._caption))
            self._caption = None


def _figures(path):
    page = _Figures()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_every_figure_has_alt_text_and_a_caption_saying_what_it_shows(theo_report):
    diag, paths = theo_report
    page = _figures(paths[0])
    n_images = sum(len(v) for v in diag.figures().values())
    assert len(page.figures) == n_images
    for k, (alt, caption) in enumerate(page.figures, start=1):
        assert alt and len(alt) > 20, alt
        assert caption.startswith(f"Figure {k}. ") and len(caption) > 60, caption
    words = " ".join(a + " " + c for a, c in page.figures)
    for term in ("CWRES", "conditional weighted residuals", "NPDE", "normalised prediction distribution errors",
                 "IWRES", "IPRED", "PRED", "EBE", "VPC", "pcVPC", "QQ plot of CWRES", "CWRES vs time"):
        assert term in words, term
    # readable without images: CWRES named in the page's visible text, not only inside the PNGs
    assert "conditional weighted residuals (CWRES" in " ".join(page.text)
    alts = {caption.split(". ")[1]: alt for alt, caption in page.figures}
    assert alts["Goodness of fit"] == ("Goodness of fit: Observations vs population predictions (DV vs PRED); "
                                       "Observations vs individual predictions (DV vs IPRED); CWRES vs time; "
                                       "CWRES vs population predictions")
    assert "(DV vs TIME)" in alts["Visual predictive check"]
    assert "(prediction-corrected DV vs TIME)" in alts["Prediction-corrected VPC"]
    assert "histogram of ETA(KA)" in alts["Random effects"]
    assert "ETA(CL) vs WT" in alts["Random effects vs covariates"]


def test_report_shows_omega_as_cv_percent_by_the_exact_formula(theo_report, theo_results):
    diag, paths = theo_report
    fit, _ = theo_results
    params = pd.read_csv(paths[0].parent / "report_parameters.csv").set_index("parameter")
    assert list(params.columns[:2]) == ["estimate", "cv_percent"]
    for eta in ("KA", "CL"):
        omega2 = fit.estimates[f"OMEGA({eta})"]
        cv = params.loc[f"OMEGA({eta})", "cv_percent"]
        assert math.isclose(cv, 100 * math.sqrt(math.exp(omega2) - 1), rel_tol=1e-12)
        assert abs(cv - 100 * math.sqrt(omega2)) > 1e-3          # not the approximation 100·ω
    assert params.loc[["KA", "CL", "V", "SIGMA(ADD)"], "cv_percent"].isna().all()
    text = paths[0].read_text(encoding="utf-8")
    assert "100·√(exp(ω²) − 1)" in text and "cv_percent" in text
    assert f"{params.loc['OMEGA(CL)', 'cv_percent']:.5g}" in text


def test_summary_shows_cv_percent(theo_results):
    fit, _ = theo_results
    text = fit.summary()
    header = next(line for line in text.splitlines() if line.split()[:3] == ["parameter", "estimate", "cv_percent"])
    rows = text.splitlines()[text.splitlines().index(header) + 1:]
    cv = {line.split()[0]: line.split()[2] for line in rows[:len(fit.parameter_names)]}
    assert cv["OMEGA(KA)"] == f"{100 * math.sqrt(math.exp(fit.estimates['OMEGA(KA)']) - 1):.5g}"
    assert cv["CL"] == "NaN"
    assert "100*sqrt(exp(omega^2) - 1)" in text


def test_cv_formula_values():
    assert lognormal_cv_percent(1.0) == 100 * math.sqrt(math.e - 1)
    np.testing.assert_allclose(lognormal_cv_percent([0.0, 0.09, 0.25]),
                               [0.0, 100 * np.sqrt(np.expm1(0.09)), 100 * np.sqrt(np.expm1(0.25))], rtol=1e-15)
    assert math.isnan(lognormal_cv_percent(-0.1))
    table = pd.DataFrame({"parameter": ["OMEGA(CL)", "OMEGA(V,CL)", "OMEGA(IOV_CL)", "SIGMA(PROP)", "V"],
                          "estimate": [0.2, 0.05, 0.04, 0.01, 50.0], "se": [0.1, 0.1, 0.1, 0.1, 1.0]})
    out = with_cv_percent(table)
    assert list(out.columns) == ["parameter", "estimate", "cv_percent", "se"]
    np.testing.assert_allclose(out["cv_percent"], [100 * math.sqrt(math.expm1(0.2)), np.nan,
                                                   100 * math.sqrt(math.expm1(0.04)), np.nan, np.nan])
    assert list(table.columns) == ["parameter", "estimate", "se"]       # input not modified

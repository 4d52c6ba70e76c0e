"""The HTML report: every section, self-contained, tables as CSV; `pmxgen report` and `pmxgen.report(...)`."""
import base64
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

import pmxgen
from pmxgen.cli import main
from pmxgen.report.html import SECTIONS


class _Page(HTMLParser):
    """Collects section ids, headings, image sources and external references."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.external, self.headings, self._heading = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag in ("script", "iframe", "object") or (tag == "link" and a.get("rel") != "icon"):
            self.external.append(tag)
        for key in ("src", "href"):
            value = a.get(key) or ""
            if re.match(r"(https?:)?//", value):
                self.external.append(value)
        if tag in ("h2", "h3"):
            self._heading = ""

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data

    def handle_endtag(self, tag):
        if tag in ("h2", "h3") and self._heading is not None:
            self.headings.append(self._heading)
            self._heading = None


def _parse(path):
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_report_has_every_section_and_is_self_contained(theo_report):
    diag, paths = theo_report
    page = _parse(paths[0])
    assert [sid for sid, _ in SECTIONS] == [i for i in page.ids if i in dict(SECTIONS)]
    figures = diag.figures()
    for name in ["Goodness of fit", "Residuals and NPDE", "Random effects", "Random effects vs covariates",
                 "Visual predictive check", "Prediction-corrected VPC", "Individual fits", "Convergence"]:
        assert name in page.headings and name in figures
    assert len(page.images) == sum(len(v) for v in figures.values())
    for src in page.images:                             # every image embedded as a valid PNG
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.external == []


def test_report_content_matches_the_fit(theo_report, theo_results):
    diag, paths = theo_report
    fit, _ = theo_results
    text = paths[0].read_text(encoding="utf-8")
    for label, value in [("subjects", 12), ("observations", 132), ("dose records", 12), ("BLQ observations", 0)]:
        assert re.search(rf"<th>{label}</th><td>{value}</td>", text), label
    for item, ok, _ in fit.checklist():
        assert item in text
    for name, est in fit.estimates.items():
        assert name in text and f"{est:.5g}" in text
    assert f"{fit.rse['CL']:.5g}" in text and f"{fit.ofv:.5g}" in text and pmxgen.__version__ in text
    assert "FOCE" in text and "150 (seed 11)" in text


def test_tables_are_written_as_csv(theo_report, theo_results):
    diag, paths = theo_report
    fit, _ = theo_results
    names = [p.name for p in paths[1:]]
    assert names == [f"report_{n}.csv" for n in ("parameters", "data_summary", "checklist", "npde_tests", "shrinkage",
                                                 "residuals", "vpc", "pcvpc")]
    params = pd.read_csv(paths[1])
    expected = fit.parameter_table()
    assert np.allclose(params["estimate"], expected["estimate"]) and np.allclose(params["se"], expected["se"])
    assert params.set_index("parameter").loc["OMEGA(KA)", "shrinkage_percent"] == pytest.approx(
        100 * fit.shrinkage["KA"])
    residuals = pd.read_csv(paths[0].parent / "report_residuals.csv")
    assert len(residuals) == 132 and residuals["NPDE"].notna().all()
    assert np.allclose(residuals["CWRES"], fit.observations["CWRES"])


def test_package_is_callable_and_keeps_write_fit(theo_results, tmp_path):
    fit, _ = theo_results
    assert callable(pmxgen.report) and pmxgen.report.write_report is pmxgen.report.html.write_report
    written = pmxgen.report.write_fit(fit, tmp_path / "results")
    assert {p.name for p in written} >= {"fit.json", "results.json"}
    paths = pmxgen.report(tmp_path / "results", tmp_path / "r.html", n_simulations=60, pred_corr=False,
                          tables=False)
    assert paths == [tmp_path / "r.html"] and "Visual predictive check" in paths[0].read_text()
    assert "Prediction-corrected VPC" not in paths[0].read_text()


def test_cli_report(theo_results, tmp_path, capsys):
    fit, folder = theo_results
    out = tmp_path / "cli" / "diag.html"
    assert main(["report", str(folder), "-o", str(out), "--simulations", "60", "--bins", "0,1,3,6,30",
                 "--vpc", "pcvpc", "--per-page", "6"]) == 0
    assert f"Wrote {out}" in capsys.readouterr().out
    vpc = pd.read_csv(out.parent / "diag_pcvpc.csv")
    assert vpc["upper"].tolist() == [1, 3, 6, 30]
    assert _parse(out).headings.count("Individual fits") == 1 and "page 2 of 2" in out.read_text()


def test_cli_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--bins", "a,b"]) == 2
    assert "--bins expects" in capsys.readouterr().err
    (tmp_path / "fit.json").write_text('{"format": "other"}')
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    assert "not a pmxgen FitResult" in capsys.readouterr().err

"""The examples of docs/extending.md run as written: a new model and a new estimator, end to end."""
import re
from pathlib import Path

import numpy as np
import pytest

import pmxgen
from pmxgen.estimation import registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture
def namespace():
    """The doc's code blocks executed in order, in one namespace; the registry restored afterwards."""
    before = dict(registry._REGISTRY)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 4, "docs/extending.md should hold the model, its fit, the estimator and its use"
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), ns)
    yield ns
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)


def test_the_new_model_is_fitted_exactly_and_the_new_estimator_agrees(namespace):
    assert len(re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0].strip().splitlines()) <= 45
    sml, data = namespace["fit"], namespace["data"]
    foce = pmxgen.fit(namespace["RandomSlope"](), data, method="foce", covariance="R")
    assert foce.status == "converged"
    # the model is linear-Gaussian: FOCE's likelihood is exact, and so is FO's and Laplace's
    for method in ("fo", "laplace"):
        other = pmxgen.fit(namespace["RandomSlope"](), data, method=method, covariance=None)
        assert other.minus2ll == pytest.approx(foce.minus2ll, abs=1e-6)
    # the truth is recovered within 3 SE
    truth = {"B0": 2.0, "B1": 0.5, "SIGMA(ADD)": 0.25}
    for name, value in truth.items():
        assert abs(foce.estimates[name] - value) < 3 * foce.se[name], name
    # the 30-line estimator (simulated ML with 400 prior draws) reaches the same optimum roughly
    assert sml.method == "sml" and sml.ebe is None and "no individual estimates" in sml.unavailable["ebe"]
    assert sml.minus2ll == pytest.approx(foce.minus2ll, abs=3.0)
    assert sml.estimates["B1"] == pytest.approx(foce.estimates["B1"], abs=2 * foce.se["B1"])
    assert "sml" in pmxgen.ALL_METHODS
    # and it round-trips like every FitResult
    again = pmxgen.FitResult.from_json(sml.to_json())
    assert again.ebe is None and again.unavailable == sml.unavailable
    assert np.isfinite(again.minus2ll)


def test_the_new_estimator_is_on_the_command_line(namespace, tmp_path, capsys):
    from pmxgen.cli import main
    frame = namespace["data"].to_frame()
    source = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (tmp_path / "random_slope.py").write_text(source[0] + "\nmodel = RandomSlope()\n")
    (tmp_path / "sml.py").write_text(source[2])
    frame.to_csv(tmp_path / "data.csv", index=False)
    registry._REGISTRY.pop("sml")                      # as in a fresh process: only --plugin registers it
    with pytest.raises(SystemExit) as info:             # argparse: --method sml is not a choice
        main(["fit", str(tmp_path / "data.csv"), "--model", str(tmp_path / "random_slope.py"), "--method", "sml"])
    assert info.value.code == 2
    capsys.readouterr()
    code = main(["fit", str(tmp_path / "data.csv"), "--model", str(tmp_path / "random_slope.py"), "--no-doses",
                 "--plugin", str(tmp_path / "sml.py"), "--method", "sml", "--draws", "200", "--quiet"])
    out = capsys.readouterr()
    assert code in (0, 1) and "method: SML" in out.out, out.err
    fit_help = pmxgen.cli.build_parser()._subparsers._group_actions[0].choices["fit"].format_help()
    assert "sml (simulated maximum likelihood" in " ".join(fit_help.split())     # argparse wraps the text

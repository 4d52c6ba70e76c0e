"""`pmxgen fit`: the README's main job, result files, model files, and clean errors."""
import json

import pandas as pd
import pytest

from pmxgen.cli import main
from pmxgen.estimation import FitResult


def test_fit_writes_results_and_tables(tmp_path, capsys):
    code = main(["fit", "theophylline", "--model", "1cmt_oral", "--error", "additive", "--iiv", "KA,CL",
                 "--method", "focei", "--output", str(tmp_path), "--importance-samples", "100"])
    captured = capsys.readouterr()
    assert code == 0
    assert "[OK] minimization" in captured.out and "OFV (NONMEM" in captured.out
    assert "FOCEI iteration" in captured.err  # progress lines
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("ofv", "minus2ll", "aic", "bic", "method", "parameters", "covariance", "ebe"):
        assert key in results
    assert results["method"] == "focei" and results["covariance"]["status"] == "ok"
    assert set(results["parameters"]) == {"KA", "CL", "V", "OMEGA(KA)", "OMEGA(CL)", "SIGMA(ADD)"}
    cl = results["parameters"]["CL"]
    assert cl["se"] > 0 and cl["rse"] == pytest.approx(100 * cl["se"] / cl["estimate"])
    assert len(results["ebe"]) == 12 and set(results["ebe"]["1"]) == {"KA", "CL"}
    assert results["importance_sampling"]["n_samples"] == 100
    obs = pd.read_csv(tmp_path / "observations.csv")
    assert len(obs) == 132 and {"PRED", "IPRED", "CWRES", "IWRES", "WRES"} <= set(obs.columns)
    subjects = pd.read_csv(tmp_path / "subjects.csv")
    assert len(subjects) == 12 and {"ETA(KA)", "CL"} <= set(subjects.columns)
    fit = FitResult.from_json(tmp_path / "fit.json")
    assert fit.ofv == results["ofv"]
    assert (tmp_path / "summary.txt").read_text().startswith("pmxgen fit")


def test_fit_with_a_model_file(tmp_path, capsys):
    model_file = tmp_path / "theo_model.py"
    model_file.write_text(
        "import torch, pmxgen\n"
        "from pmxgen.models import NLMEModel\n"
        "def individual(theta, eta, cov):\n"
        "    return {'KA': theta['KA'] * torch.exp(eta['KA']),\n"
        "            'CL': theta['CL'] * (cov['WT'] / 70) ** 0.75 * torch.exp(eta['CL']), 'V': theta['V']}\n"
        "def build(data):\n"
        "    return NLMEModel(pmxgen.get_model('1cmt_oral'), theta={'KA': (0, 1.5), 'CL': (0, 3.0), 'V': (0, 30.0)},\n"
        "                     omega={'KA': 0.3, 'CL': 0.1}, error={'kind': 'additive', 'init': {'ADD': 0.5}},\n"
        "                     individual=individual)\n")
    code = main(["fit", "theophylline", "--model", str(model_file), "--method", "foce", "--covariance", "none",
                 "--derivatives", "expansion", "--quiet", "--output", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "FOCE iteration" not in captured.err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["covariance"]["status"] == "not requested"
    assert 2.0 < results["parameters"]["CL"]["estimate"] < 4.0
    assert FitResult.from_json(tmp_path / "out" / "fit.json").options["derivatives"] == "expansion"



def test_fit_with_initial_and_fixed_values(tmp_path, capsys):
    import pmxgen
    out = tmp_path / "out"
    code = main(["fit", "theophylline", "--model", "1cmt_oral", "--error", "additive", "--iiv", "KA,CL",
                 "--init", "CL=3", "--fix", "KA=1.5", "--fix", "SIGMA(ADD)=0.6", "--covariance", "none",
                 "--quiet", "--output", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["parameters"]["KA"] == {"estimate": 1.5, "se": "NaN", "rse": "NaN", "fixed": True}
    assert results["parameters"]["SIGMA(ADD)"]["estimate"] == 0.6 and results["parameters"]["SIGMA(ADD)"]["fixed"]
    assert not results["parameters"]["CL"]["fixed"]
    fit = FitResult.from_json(out / "fit.json")
    assert fit.history[0]["CL"] == pytest.approx(3.0, rel=1e-12)   # started from --init
    run = pmxgen.load_run(out)                               # the run rebuilds the same model
    assert run.model.parameter_set.names == ("CL", "V", "OMEGA(KA)", "OMEGA(CL)")
    assert main(["fit", "theophylline", "--model", "1cmt_oral", "--iiv", "KA,CL", "--fix", "OMEGA(V)=0.1"]) == 2
    assert "unknown parameters ['OMEGA(V)']" in capsys.readouterr().err
    assert main(["fit", "theophylline", "--model", "1cmt_oral", "--fix", "KA=abc"]) == 2
    assert "--fix KA: 'abc' is not a number" in capsys.readouterr().err

def test_fit_errors_are_clean(tmp_path, capsys):
    assert main(["fit", "theophylline", "--model", "1cmt_oral", "--error", "proportional"]) == 2
    err = capsys.readouterr().err
    assert "pmxgen: error:" in err and "proportional" in err and "row" in err
    assert main(["fit", "theophylline", "--model", "7cmt_magic"]) == 2
    assert "neither a .py model file nor a built-in model" in capsys.readouterr().err
    assert main(["fit", "theophylline", "--model", "1cmt_oral", "--method", "saem", "--derivatives", "expansion"]) == 2
    assert "--derivatives does not apply to --method saem; it applies to fo, foce, focei, laplace" in \
        capsys.readouterr().err


def test_readme_model_file_example_fits(tmp_path, capsys):
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("# my_model.py")
    code = readme[start:readme.index("```", start)]
    (tmp_path / "my_model.py").write_text(code)
    assert main(["fit", "theophylline", "--model", str(tmp_path / "my_model.py"), "--covariance", "none",
                 "--quiet"]) == 0
    assert "OMEGA(CL,KA)" in capsys.readouterr().out

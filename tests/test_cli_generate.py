"""`pmxgen generate` (virtual populations to CSV) and `pmxgen simulate --population` end to end."""
import numpy as np
import pandas as pd
import pytest

import pmxgen
from pmxgen.cli import main
from pmxgen.generative import load_generator

MODEL_FILE = (
    "import torch, pmxgen\n"
    "from pmxgen.models import NLMEModel\n"
    "def individual(theta, eta, cov):\n"
    "    return {'KA': theta['KA'] * torch.exp(eta['KA']),\n"
    "            'CL': theta['CL'] * (cov['WT'] / 70) ** 0.75 * torch.exp(eta['CL']), 'V': theta['V']}\n"
    "def build(data):\n"
    "    return NLMEModel(pmxgen.get_model('1cmt_oral'), theta={'KA': (0, 1.2), 'CL': (0, 4.0), 'V': (0, 35.0)},\n"
    "                     omega={'KA': 0.16, 'CL': 0.09}, error={'kind': 'combined', 'init': {'PROP': 0.0144,\n"
    "                     'ADD': 0.0009}}, individual=individual)\n")


def test_generate_diabetes_streams_a_bounded_population(tmp_path, capsys):
    out = tmp_path / "vpop.csv"
    args = ["generate", "diabetes", "--n", "2500", "--output", str(out), "--drop", "Y", "--seed", "3",
            "--chunk-size", "1000", "--save", str(tmp_path / "gen.safetensors"), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Wrote 2500 virtual subjects" in printed and "gaussian_copula" in printed
    pop = pd.read_csv(out)
    panel = pmxgen.datasets.load_table("diabetes").drop(columns="Y")
    assert list(pop.columns) == ["ID"] + list(panel.columns)
    assert (pop["ID"] == np.arange(1, 2501)).all()
    # respects levels, whole numbers and the observed ranges (empirical marginals)
    assert set(pop["SEX"]) == {1, 2} and pop["AGE"].dtype.kind == "i"
    for col in panel.columns:
        assert pop[col].min() >= panel[col].min() - 1e-9 and pop[col].max() <= panel[col].max() + 1e-9, col
    # the same seed and chunking give the same file; the saved generator reloads
    again = tmp_path / "again.csv"
    assert main([str(again) if a == str(out) else a for a in args]) == 0
    assert again.read_bytes() == out.read_bytes()
    gen = load_generator(tmp_path / "gen.safetensors")
    assert gen.name == "gaussian_copula" and list(gen.sample(5, seed=0).columns) == list(panel.columns)


def test_generate_conditions_given_and_resampled(tmp_path):
    out = tmp_path / "men.csv"
    assert main(["generate", "diabetes", "--n", "400", "--output", str(out), "--conditions", "SEX", "--given",
                 "SEX=2", "--drop", "Y", "--quiet"]) == 0
    assert (pd.read_csv(out)["SEX"] == 2).all()
    out = tmp_path / "mix.csv"
    assert main(["generate", "diabetes", "--n", "4000", "--output", str(out), "--conditions", "SEX", "--drop", "Y",
                 "--model", "mvn", "--quiet"]) == 0
    share = (pd.read_csv(out)["SEX"] == 2).mean()
    data_share = (pmxgen.datasets.load_table("diabetes")["SEX"] == 2).mean()
    assert abs(share - data_share) < 4 * np.sqrt(0.25 / 4000)     # resampled from the data's mix


def test_generate_errors_are_clear(tmp_path, capsys):
    out = str(tmp_path / "x.csv")
    assert main(["generate", "diabetes", "--model", "nope", "--output", out]) == 2
    assert "unknown generator 'nope'; choose one of" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("WT,SEX\n70,1\n.,2\n80,1\n")
    assert main(["generate", str(bad), "--output", out]) == 2
    assert "bad.csv, row 3, column WT: missing value" in capsys.readouterr().err
    assert main(["generate", "diabetes", "--conditions", "RACE", "--output", out]) == 2
    assert "condition column(s) ['RACE']" in capsys.readouterr().err
    assert main(["generate", "diabetes", "--bounds", "BMI=10", "--output", out]) == 2
    assert "--bounds expects NAME=LOWER:UPPER" in capsys.readouterr().err
    assert main(["generate", "diabetes"]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["generate", "--models"]) == 0
    assert "gaussian_copula" in capsys.readouterr().out


def test_simulate_a_fitted_model_on_a_generated_population(tmp_path, capsys):
    data = pmxgen.datasets.load("sim_1cmt_oral_wt")
    csv = tmp_path / "wt30.csv"
    data.subset(list(data.ids)[:30]).to_frame().to_csv(csv, index=False, na_rep=".")
    (tmp_path / "wt_model.py").write_text(MODEL_FILE)
    fit_dir = tmp_path / "fit"
    assert main(["fit", str(csv), "--model", str(tmp_path / "wt_model.py"), "--method", "foce", "--covariance",
                 "none", "--quiet", "--output", str(fit_dir)]) == 0
    # the bundled set's own subjects (one row each: ID, WT) are the covariates to learn
    vpop = tmp_path / "vpop.csv"
    assert main(["generate", "sim_1cmt_oral_wt", "--n", "2000", "--output", str(vpop), "--quiet"]) == 0
    capsys.readouterr()
    sim_dir = tmp_path / "sim"
    assert main(["simulate", str(fit_dir), "--population", str(vpop), "--regimen", "100 mg q24h x2 ss",
                 "--target", "auc[first]>=25", "--strata", "WT:60,80", "--output", str(sim_dir)]) == 0
    text = capsys.readouterr().out
    assert "virtual population" in text and "by WT band" in text
    strata = pd.read_csv(sim_dir / "pta_strata.csv")
    assert list(strata["stratum"]) == ["<60", "60-<80", ">=80"] and strata["n"].sum() == 2000
    wt = pd.read_csv(vpop)["WT"]
    assert list(strata["n"]) == [(wt < 60).sum(), ((wt >= 60) & (wt < 80)).sum(), (wt >= 80).sum()]
    # heavier subjects clear more drug (CL ∝ WT^0.75): lower AUC, so lower attainment of an AUC target
    assert strata["pta"].is_monotonic_decreasing and strata["pta"].iloc[0] > strata["pta"].iloc[-1]
    # a population without the model's covariate is refused, naming it
    no_wt = tmp_path / "no_wt.csv"
    pd.read_csv(vpop).drop(columns="WT").assign(SEX=1).to_csv(no_wt, index=False)
    assert main(["simulate", str(fit_dir), "--population", str(no_wt), "--regimen", "100 mg q24h x2"]) == 2
    assert "needs the covariate(s) ['WT']" in capsys.readouterr().err
    assert main(["simulate", str(fit_dir), "--population", str(vpop), "--n", "5", "--regimen", "100 mg q24h x2"]) == 2
    assert "--n 5 differs from the 2000 rows" in capsys.readouterr().err
    assert main(["simulate", str(fit_dir), "--strata", "SEX", "--regimen", "100 mg q24h x2"]) == 2
    assert "--strata needs --population" in capsys.readouterr().err


@pytest.mark.parametrize("name,columns", [("pheno", ["ID", "WGT", "APGR"]),
                                          ("moxo", ["ID", "AGE", "SEX", "WT", "CRCL"])])
def test_baseline_covariates_of_the_bundled_pk_sets(name, columns):
    panel = pmxgen.datasets.baseline_covariates(name)
    data = pmxgen.datasets.load(name)
    assert list(panel.columns) == columns and len(panel) == data.n_subjects
    frame = data.to_frame()
    first = frame.groupby("ID", sort=False).first()
    for col in columns[1:]:
        np.testing.assert_array_equal(panel[col].to_numpy(), first.loc[panel["ID"], col].to_numpy())


def test_diabetes_panel_is_the_raw_scikit_learn_data(capsys):
    """The bundled CSV equals scikit-learn's raw (unscaled) copy exactly (scikit-learn is a test dependency only)."""
    from sklearn.datasets import load_diabetes
    raw = load_diabetes(scaled=False)
    panel = pmxgen.datasets.load_table("diabetes")
    assert list(panel.columns) == ["AGE", "SEX", "BMI", "BP", "S1", "S2", "S3", "S4", "S5", "S6", "Y"]
    np.testing.assert_array_equal(panel.to_numpy(dtype=float), np.column_stack([raw.data, raw.target]))
    assert pmxgen.datasets.kind("diabetes") == "covariates" and pmxgen.datasets.kind("pheno") == "nonmem"
    assert pmxgen.datasets.list("covariates") == ["diabetes"] and "diabetes" not in pmxgen.datasets.list("nonmem")
    with pytest.raises(pmxgen.DatasetError, match="covariate panel.*load_table"):
        pmxgen.datasets.load("diabetes")
    with pytest.raises(pmxgen.DatasetError, match="NONMEM data set.*baseline_covariates"):
        pmxgen.datasets.load_table("pheno")
    assert main(["datasets"]) == 0
    assert "442 rows, 11 columns (covariate panel)" in capsys.readouterr().out
    assert main(["summarize", "diabetes"]) == 2
    assert "'diabetes' is a covariate panel" in capsys.readouterr().err

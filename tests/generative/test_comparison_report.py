"""compare_generators, the HTML comparison report and `pmxgen compare-generators`, with the multivariate
normal baseline and a tiny family defined here (independent Gaussians: it cannot learn correlations)."""
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from pmxgen.cli import main
from pmxgen.errors import ModelError
from pmxgen.generative import Generator, register_generator
from pmxgen.generative.comparison import REFERENCE, baseline_check, compare_generators
from pmxgen.generative.generator import GENERATORS
from pmxgen.report.generators import GENERATOR_SECTIONS, render_generator_report, write_generator_report


class _Diagonal(torch.nn.Module):
    def __init__(self, dim, cond_dim):
        super().__init__()
        self.mean = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.log_sd = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.gain = torch.nn.Parameter(torch.zeros(cond_dim, dim, dtype=torch.float64))


class TinyDiagonal(Generator):
    """Independent Gaussians on the encoded columns (means shifted linearly by the conditions), trained by
    the default minibatch trainer on the negative log-likelihood."""

    name = "tinydiag_test"
    tractable_log_prob = True

    def __init__(self, *, init_scale: float = 1.0, **common):
        super().__init__(**common)
        self.init_scale = init_scale

    def _build(self, dim, cond_dim):
        return _Diagonal(dim, cond_dim)

    def _loc(self, c, n):
        loc = self.network.mean.expand(n, -1)
        return loc if c is None else loc + c @ self.network.gain

    def _log_prob(self, x, c):
        z = (x - self._loc(c, x.shape[0])) / self.network.log_sd.exp()
        return (-0.5 * z ** 2 - self.network.log_sd - 0.5 * math.log(2 * math.pi)).sum(1)

    def _loss(self, x, c):
        return -self._log_prob(x, c).mean()

    def _sample(self, n, c, generator):
        eps = torch.randn(n, self.transform_.dim, generator=generator, dtype=torch.float64, device=generator.device)
        return self._loc(c, n) + eps * self.network.log_sd.exp()


class Broken(Generator):
    name = "broken_test"

    def _build(self, dim, cond_dim):
        return torch.nn.Linear(1, 1)

    def _train(self, x, c, x_val, c_val):
        raise ModelError("this family always fails")


@pytest.fixture(autouse=True, scope="module")
def _families():
    register_generator(TinyDiagonal)
    register_generator(Broken)
    yield
    GENERATORS.pop(TinyDiagonal.name, None)
    GENERATORS.pop(Broken.name, None)


def _panel(n=300, seed=0):
    """Correlated continuous columns (WT, HT, AGE) and a binary SEX shifting WT and HT."""
    rng = np.random.default_rng(seed)
    sex = rng.integers(1, 3, n)
    z = rng.standard_normal(n)
    wt = np.exp(np.log(70) + 0.12 * (sex - 1) + 0.2 * z)
    ht = 165 + 8 * (sex - 1) + 6 * (0.8 * z + 0.6 * rng.standard_normal(n))
    age = np.clip(np.round(45 + 10 * (0.5 * z + 0.87 * rng.standard_normal(n))), 18, 90)
    return pd.DataFrame({"WT": wt, "HT": ht, "AGE": age, "SEX": sex})


FAST = {"n_permutations": 50, "c2st_epochs": 100}
TINY = {"tinydiag_test": {"max_epochs": 60, "learning_rate": 0.05, "batch_size": 64}}


def test_one_row_per_model_with_wall_times_and_the_baseline_wins_on_correlations():
    data = _panel()
    result = compare_generators(data, ["mvn", "tinydiag_test"], n=400, seed=1, reference=True, params=TINY,
                                metrics=FAST)
    table = result.table
    assert list(table["model"]) == [REFERENCE, "mvn", "tinydiag_test"]
    assert len(result.train) == 210 and len(result.test) == 90 and set(result.samples) == {"mvn", "tinydiag_test"}
    models = table.set_index("model")
    assert (models.loc[["mvn", "tinydiag_test"], ["fit_time_s", "sample_time_s"]] > 0).all().all()
    assert (models["n_generated"] == [210, 400, 400]).all() and (models["n_real"] == 90).all()
    # the tiny family ignores the correlations (WT–HT about 0.8): its correlation error and classifier
    # accuracy are clearly worse than the baseline's, which is near the reference (train split) row
    assert models.loc["tinydiag_test", "correlation_error"] > 2 * models.loc["mvn", "correlation_error"]
    assert models.loc["tinydiag_test", "c2st_accuracy"] > models.loc["mvn", "c2st_accuracy"]
    check = baseline_check(table).set_index("model")
    assert not check.loc["tinydiag_test", "beats_correlation"] and not check.loc["tinydiag_test", "beats_both"]
    # tractable, all continuous? no (SEX is binary), so no held-out NLL
    assert table["nll"].isna().all()
    # generated values keep bounds and levels
    assert set(result.samples["tinydiag_test"]["SEX"]) <= {1, 2} and (result.samples["mvn"]["WT"] > 0).all()
    again = compare_generators(data, ["mvn", "tinydiag_test"], n=400, seed=1, reference=True, params=TINY,
                               metrics=FAST).table
    timing = ["fit_time_s", "sample_time_s"]
    pd.testing.assert_frame_equal(again.drop(columns=timing), table.drop(columns=timing))


def test_conditions_failures_and_nll():
    data = _panel()
    result = compare_generators(data, ["mvn", "broken_test", "tinydiag_test"], seed=0, conditions=["SEX"],
                                params=TINY, metrics=FAST)
    rows = result.table.set_index("model")
    assert rows.loc["broken_test", "status"] == "error" and "always fails" in rows.loc["broken_test", "message"]
    assert math.isnan(rows.loc["broken_test", "c2st_accuracy"])
    assert rows.loc["mvn", "status"] == "converged" and np.isfinite(rows.loc["mvn", "c2st_accuracy"])
    # conditional generation at the held-out rows' SEX values: the SEX shares of the generated rows are
    # those of a resample of the held-out rows
    share = result.samples["mvn"]["SEX"].eq(2).mean()
    assert abs(share - result.test["SEX"].eq(2).mean()) < 0.08
    # every modelled column continuous (SEX is a condition): the held-out NLL exists and equals -mean log_prob
    nll = rows.loc["mvn", "nll"]
    assert nll == pytest.approx(-float(result.generators["mvn"].log_prob(result.test).mean()))
    with pytest.raises(ModelError, match="unknown generator 'nope'"):
        compare_generators(data, ["mvn", "nope"])
    with pytest.raises(ModelError, match="named twice"):
        compare_generators(data, ["mvn", "mvn"])
    with pytest.raises(ModelError, match="not among the models"):
        compare_generators(data, ["mvn"], params={"tinydiag_test": {}})


def test_report_has_every_section_and_inline_figures(tmp_path):
    result = compare_generators(_panel(), ["mvn", "tinydiag_test"], n=300, seed=0, params=TINY, metrics=FAST,
                                source="panel.csv")
    text = render_generator_report(result, columns=["WT", "HT", "AGE"], dpi=40)
    for sid, title in GENERATOR_SECTIONS:
        assert f'id="{sid}"' in text and title in text
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)"', text)
    # scatter and histograms: one figure per model; one correlation figure
    assert len(images) == 5
    alts = [alt for _, alt in images]
    assert sum(a.startswith("Pairwise scatter") for a in alts) == 2 and "HT vs WT" in alts[0]
    assert sum(a.startswith("Marginal histograms") for a in alts) == 2
    assert alts[-1].startswith("Correlation heatmaps") and "correlations: tinydiag_test" in alts[-1]
    assert "http://" not in text and "https://" not in text and "<script" not in text
    metrics = text[text.index('id="metrics"'):text.index('id="baseline"')]
    metrics = metrics[:metrics.index("</table>")]
    assert re.findall(r"<tr>\s*<td>([^<]*)</td>", metrics) == ["mvn", "tinydiag_test"]     # one row per model
    assert "<th>fit_time_s</th>" in metrics and "<th>sample_time_s</th>" in metrics
    paths = write_generator_report(result, tmp_path / "cmp.html", dpi=40)
    assert [p.name for p in paths] == ["cmp.html", "cmp_metrics.csv"]
    assert len(pd.read_csv(paths[1])) == 2


def test_command_line(tmp_path, capsys):
    csv = tmp_path / "panel.csv"
    _panel(200).to_csv(csv, index=False)
    out = tmp_path / "report.html"
    code = main(["compare-generators", str(csv), "--models", "mvn", "--reference", "--permutations", "30",
                 "--output", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and out.exists() and (tmp_path / "report_metrics.csv").exists()
    assert "(train split)" in printed and "mvn" in printed and "c2st_accuracy" in printed
    assert main(["compare-generators", str(csv), "--models", "mvn,nope", "--output", str(out)]) == 2
    assert "unknown generator(s) nope" in capsys.readouterr().err
    assert main(["compare-generators", str(csv), "--models", "broken_test", "--output", str(out), "--quiet"]) == 1

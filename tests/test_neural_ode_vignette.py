"""The neural-ODE vignette runs (quick mode) and shows what its text says."""
import importlib.util
import math
import warnings
from pathlib import Path

VIGNETTE = Path(__file__).resolve().parents[1] / "vignettes" / "neural_ode.py"


def _load():
    spec = importlib.util.spec_from_file_location("neural_ode_vignette", VIGNETTE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_neural_ode_vignette(tmp_path):
    vignette = _load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the quick mode caps the neural FOCE-I iterations
        results = vignette.fits(quick=True)
    table = vignette.compare(quick=True, results=results).set_index("model")
    neural, mechanistic = table.loc["NEURAL_ODE"], table.loc["1CMT_IV"]
    assert mechanistic["status"] == "converged" and neural["status"] != "failed"
    assert math.isfinite(neural["ofv"]) and math.isfinite(mechanistic["ofv"])
    # network weights are counted as parameters: 32 weights + V, Ω(V), Ω(S_C), σ
    assert neural["n_weights"] == 32 and neural["n_parameters"] == 36 and mechanistic["n_parameters"] == 5
    assert neural["aic"] == neural["minus2ll"] + 2 * 36
    # from flat curves (Cc = DOSE/V: ratio 1) the neural ODE learned an elimination ...
    assert neural["pred_ratio_last_first"] < 0.5 and mechanistic["pred_ratio_last_first"] < 0.5
    # ... FOCE-I improved on the pretrained start ...
    assert neural["ofv"] < neural["ofv_start"] - 5
    # ... and its 32 weights cost it the AIC comparison
    assert neural["aic"] > mechanistic["aic"]
    paths = vignette.figures({"NEURAL_ODE": results["NEURAL_ODE"]}, tmp_path)
    assert [p.name for p in paths] == ["neural_ode_vpc.png", "neural_ode_individual_1.png"]
    assert all(p.stat().st_size > 1000 for p in paths)

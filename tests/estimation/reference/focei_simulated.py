"""FOCE-I estimates and sandwich SEs on the bundled simulated sets: the reference the EM tests compare with.

Run from the repository root: ``python tests/estimation/reference/focei_simulated.py`` writes
``focei_simulated.json`` beside this script (about a minute). The fits are deterministic;
tests/estimation/test_parameter_recovery.py checks these same FOCE-I fits against the truth.
"""
import json
import sys
from pathlib import Path

import torch

import pmxgen

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from simulated_models import model_for  # noqa: E402

SETS = ("sim_1cmt_oral_wt", "sim_2cmt_iv_infusion", "sim_1cmt_oral_1000")

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = {"pmxgen": pmxgen.__version__, "method": "focei", "covariance": "sandwich", "sets": {}}
    for name in SETS:
        data = pmxgen.datasets.load(name)
        fit = pmxgen.fit(model_for(name, data), data, method="focei")
        out["sets"][name] = {"status": fit.status, "minus2ll": fit.minus2ll,
                             "estimates": {k: fit.estimates[k] for k in fit.estimated_names},
                             "se": {k: fit.se[k] for k in fit.estimated_names}}
        print(name, fit.status, round(fit.minus2ll, 3), flush=True)
    (HERE / "focei_simulated.json").write_text(json.dumps(out, indent=1))

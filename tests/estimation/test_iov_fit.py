"""Inter-occasion variability: data simulated from the IOV model are fitted and IOV recovered."""
import numpy as np
import pandas as pd
import torch

import pmxgen
from pmxgen.models import build_model


def _design(n: int) -> pd.DataFrame:
    rows = []
    for i in range(1, n + 1):
        for occ, start in ((1, 0.0), (2, 72.0)):
            rows.append(dict(ID=i, TIME=start, DV=np.nan, AMT=100.0, EVID=4, MDV=1, CMT=1, OCC=occ))
            for t in (0.5, 1, 2, 4, 8, 12, 24):
                rows.append(dict(ID=i, TIME=start + t, DV=1.0, AMT=0.0, EVID=0, MDV=0, CMT=2, OCC=occ))
    return pd.DataFrame(rows)


def test_iov_on_clearance_is_recovered():
    design = pmxgen.read_nonmem(_design(60), occasion="OCC")
    model = build_model("1cmt_oral", design, error="proportional", iiv=("CL", "V"), iov=("CL",),
                        init={"KA": 1.0, "CL": 3.0, "V": 30.0})
    truth = {"KA": 1.0, "CL": 3.0, "V": 30.0, "OMEGA(CL)": 0.09, "OMEGA(V)": 0.04, "OMEGA(IOV_CL)": 0.04,
             "SIGMA(PROP)": 0.01}
    ps = model.parameter_set.with_initial(truth)
    values = ps.unpack(ps.initial_natural())
    gen = torch.Generator().manual_seed(21)
    eta = model.sample_eta(values, design.batch, gen)
    assert eta.shape == (60, 4)   # CL, V, IOV_CL on occasion 1 and 2
    data = design.with_dv(model.sample_y(eta, values, design.batch, gen))
    fit = pmxgen.fit(model, data, method="focei")
    assert fit.status == "converged" and fit.covariance_status == "ok"
    assert fit.eta_names == ("CL", "V", "IOV_CL[occ 1]", "IOV_CL[occ 2]")
    for name, value in truth.items():
        assert abs(fit.estimates[name] - value) < 3.5 * fit.se[name], (name, fit.estimates[name], fit.se[name])
    # The two occasions' EBEs differ: IOV is estimated per occasion.
    assert np.abs(fit.ebe[:, 2] - fit.ebe[:, 3]).mean() > 0.05

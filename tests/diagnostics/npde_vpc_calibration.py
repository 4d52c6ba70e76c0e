"""Calibration of NPDE and VPC over many simulated studies (a script, not collected by pytest).

    python tests/diagnostics/npde_vpc_calibration.py [n_studies]

Each study: the design of sim_1cmt_oral_wt (100 subjects x 11 samples) with DVs simulated from
the true model of ``truth_model.TRUTH`` (own seed); NPDE with 1000 replicates and a VPC (10 bins,
95 % intervals) with 500 replicates, under the true model, CL x 2, and additive error SD 0.2
instead of the true combined error. Under the true model the KS p-values of the NPDE should be
uniform on (0, 1) (so > 0.01 in about 99 % of studies) and the VPC coverage about 0.95.

Result (20 studies, `python tests/diagnostics/npde_vpc_calibration.py 20`, 2026-11-22):

    true model    NPDE KS p: median 0.51, > 0.01 in 20/20, KS of the 20 p-values vs U(0,1): p = 0.98;
                  global p > 0.01 in 20/20; VPC coverage mean 0.95 (min 0.90, >= 0.9 in 20/20);
                  pcVPC coverage mean 0.94 (min 0.90, >= 0.9 in 20/20)
    CL x 2        NPDE KS p: max 4e-58; global p: max 1e-57; VPC and pcVPC coverage mean 0.29, max 0.40
    additive 0.2  NPDE KS p: median 0.004, > 0.01 in 7/20; global p: median 9e-7, max 4e-4 (0/20 above
                  0.01); VPC coverage mean 0.87 (>= 0.9 in 10/20); pcVPC mean 0.85 (>= 0.9 in 7/20)

A wrong error model of about the right overall size shows in the shape of the NPDE distribution
(the npde package's global test, via Shapiro-Wilk) more than in KS or the VPC.
"""
import sys

import numpy as np
import torch
from truth_model import TRUTH, values_of
from scipy import stats

import pmxgen
from pmxgen.diagnostics import compute_npde, compute_vpc, simulate_replicates


def main(n_studies: int = 20) -> None:
    torch.set_num_threads(1)
    design = pmxgen.datasets.load("sim_1cmt_oral_wt")
    model = pmxgen.build_model("1cmt_oral", design, error="combined", iiv=("KA", "CL", "V"))
    additive = pmxgen.build_model("1cmt_oral", design, error="additive", iiv=("KA", "CL", "V"))
    cases = {"true model": (model, values_of(model, TRUTH)),
             "CL x 2": (model, values_of(model, dict(TRUTH, CL=2 * TRUTH["CL"]))),
             "additive 0.2": (additive, values_of(additive, {**{k: v for k, v in TRUTH.items()
                                                                if not k.startswith("SIGMA")}, "SIGMA(ADD)": 0.04}))}
    results = {name: {"ks": [], "global": [], "vpc": [], "pcvpc": []} for name in cases}
    true_values = cases["true model"][1]
    for study in range(n_studies):
        gen = torch.Generator().manual_seed(1000 + study)
        with torch.no_grad():
            dv = model.sample_y(model.sample_eta(true_values, design.batch, generator=gen), true_values, design.batch,
                                generator=gen)
        data = design.with_dv(dv)
        for name, (m, v) in cases.items():
            t = compute_npde(m, v, data, n_simulations=1000, seed=study).tests()
            sims = simulate_replicates(m, v, data, 500, seed=10_000 + study)
            r = results[name]
            r["ks"].append(t["ks_p"])
            r["global"].append(t["global_p"])
            r["vpc"].append(compute_vpc(m, v, data, simulated=sims).coverage())
            r["pcvpc"].append(compute_vpc(m, v, data, simulated=sims, pred_corr=True).coverage())
        print(f"study {study}: " + "; ".join(f"{n} KS p {results[n]['ks'][-1]:.3g} VPC {results[n]['vpc'][-1]:.2f}"
                                            for n in cases), flush=True)
    for name, r in results.items():
        ks, glob = np.array(r["ks"]), np.array(r["global"])
        line = (f"{name:<14} NPDE KS p: median {np.median(ks):.2g}, max {ks.max():.2g}, > 0.01 in "
                f"{(ks > 0.01).sum()}/{len(ks)}, KS of p vs U(0,1) p = {stats.kstest(ks, 'uniform').pvalue:.2g}; "
                f"global p: median {np.median(glob):.2g}, max {glob.max():.2g}, > 0.01 in {(glob > 0.01).sum()}")
        for kind in ("vpc", "pcvpc"):
            c = np.array(r[kind])
            line += f"; {kind} coverage mean {c.mean():.2f} min {c.min():.2f} max {c.max():.2f} " \
                    f">= 0.9 in {(c >= 0.9).sum()}/{len(c)}"
        print(line)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)

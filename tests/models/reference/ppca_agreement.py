"""Measured agreement of the PPCA code with its references, over more cases than the tests run.

Run from the repository root: ``python tests/models/reference/ppca_agreement.py`` writes
``ppca_agreement.json`` beside this script (about a minute on one core). Every number is a
worst case over the cases listed in the json; the tests (tests/models/test_ppca.py) check the
same properties on one or two cases each, against the tolerances given in the task (1e-6 for
estimator agreement, 1e-8 relative for scikit-learn).

Measures
--------
estimators_complete   closed form vs EM vs gradient: max |Δ W Wᵀ| / max |W Wᵀ|, |Δσ²| / σ²,
                      max |Δμ| / data SD, |Δ log L|
estimators_missing    EM vs gradient with 10 % MCAR missing values, same measures
sklearn               |n·PCA.score(X) − log L(closed form, ddof=1)| / |n·score| and the same at
                      parameters converted from scikit-learn's fit; max rel. diff. of the covariances
scipy                 max relative difference of per-row log-likelihoods from scipy.stats.multivariate_normal
model                 PPCAModel: log_marginal vs ppca_log_likelihood, and
                      log p(y|z) + log p(z) − log q*(z) − log_marginal for random z (q* the exact posterior)
recovery              closed form on data simulated from PPCAModel with known truth, 200 replicate
                      data sets of n = 500: the largest |Ĉ − C| / SE(C) over entries and fits, the SD
                      of those z-scores, and the mean error of W Wᵀ over replicates (the O(1/n) ML bias)
                      in units of one fit's SE
vem                   the lead's VariationalEM (Gaussian posterior) on PPCA data: its ELBO, the exact
                      log-likelihood at its estimates and the maximum log-likelihood (ELBO <= both)
"""
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import sklearn
import torch
from scipy import stats
from sklearn.decomposition import PCA

import pmxgen
from pmxgen.models.ppca import PPCAModel, fit_ppca, ppca_dataset, ppca_log_likelihood, ppca_matrix

HERE = Path(__file__).resolve().parent


def simulate(n, d, k, seed, noise=0.5, missing=0.0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, k)) * np.linspace(2.0, 1.0, k)
    mu = rng.normal(size=d)
    x = mu + rng.normal(size=(n, k)) @ w.T + math.sqrt(noise) * rng.normal(size=(n, d))
    if missing:
        x[rng.random(x.shape) < missing] = np.nan
        x[np.isnan(x).all(1), 0] = 0.0
    return x


def compare(a, b, x):
    sd = math.sqrt(np.nanmean(np.nanvar(x, 0)))
    return {"wwt": float(np.abs(a.loading_covariance() - b.loading_covariance()).max()
                         / np.abs(b.loading_covariance()).max()),
            "s2": abs(a.noise_variance - b.noise_variance) / b.noise_variance,
            "mu": float(np.abs(a.mean - b.mean).max() / sd),
            "loglik": abs(a.log_likelihood - b.log_likelihood)}


def worst(rows):
    return {key: max(r[key] for r in rows) for key in rows[0]}


CASES = [(200, 5, 2, 5), (300, 6, 2, 3), (100, 4, 1, 7), (500, 10, 4, 2), (60, 8, 3, 9), (1000, 3, 1, 4)]


def main():
    torch.set_num_threads(1)
    started = time.perf_counter()
    out = {"pmxgen": pmxgen.__version__, "torch": torch.__version__, "scikit-learn": sklearn.__version__,
           "scipy": scipy.__version__, "cases (n, d, k, seed)": CASES}

    rows_em, rows_grad, rows_miss, iters = [], [], [], {"em": [], "gradient": [], "em_missing": []}
    for n, d, k, seed in CASES:
        x = simulate(n, d, k, seed)
        ref = fit_ppca(x, k)
        em, grad = fit_ppca(x, k, method="em", seed=seed), fit_ppca(x, k, method="gradient", seed=seed)
        assert em.converged and grad.converged, (em.messages, grad.messages)
        rows_em.append(compare(em, ref, x))
        rows_grad.append(compare(grad, ref, x))
        iters["em"].append(em.n_iter)
        iters["gradient"].append(grad.n_iter)
        xm = simulate(n, d, k, seed, missing=0.1)
        em_m, grad_m = fit_ppca(xm, k, method="em", seed=seed), fit_ppca(xm, k, method="gradient", seed=seed)
        assert em_m.converged and grad_m.converged, (em_m.messages, grad_m.messages)
        rows_miss.append(compare(em_m, grad_m, xm))
        iters["em_missing"].append(em_m.n_iter)
    out["estimators_complete"] = {"em_vs_closed_form": worst(rows_em), "gradient_vs_closed_form": worst(rows_grad)}
    out["estimators_missing"] = {"em_vs_gradient": worst(rows_miss)}
    out["iterations"] = iters

    sk_rows = []
    for n, d, k, seed in CASES:
        x = simulate(n, d, k, seed)
        sk = PCA(n_components=k).fit(x)
        reference = n * sk.score(x)
        fit = fit_ppca(x, k, ddof=1)
        w_sk = sk.components_.T * np.sqrt(sk.explained_variance_ - sk.noise_variance_)
        ll_sk = ppca_log_likelihood(x, sk.mean_, w_sk, sk.noise_variance_)
        sk_rows.append({"closed_form_ddof1": abs(fit.log_likelihood - reference) / abs(reference),
                        "at_sklearn_parameters": abs(ll_sk - reference) / abs(reference),
                        "covariance": float(np.abs(fit.covariance() - sk.get_covariance()).max()
                                            / np.abs(sk.get_covariance()).max())})
    out["sklearn"] = worst(sk_rows)

    sp_rows = []
    for n, d, k, seed in CASES:
        for missing in (0.0, 0.3):
            x = simulate(min(n, 200), d, k, seed, missing=missing)
            rng = np.random.default_rng(seed)
            mu, w, s2 = rng.normal(size=d), rng.normal(size=(d, k)), 0.7
            c = w @ w.T + s2 * np.eye(d)
            ref = np.array([stats.multivariate_normal(mu[o], c[np.ix_(o, o)]).logpdf(row[o])
                            for row in x for o in [~np.isnan(row)]])
            ours = ppca_log_likelihood(x, mu, w, s2, per_row=True)
            sp_rows.append({"per_row_relative": float(np.abs(ours - ref).max() / np.abs(ref).max())})
    out["scipy"] = worst(sp_rows)

    model_rows = []
    for n, d, k, seed in CASES:
        x = simulate(min(n, 200), d, k, seed, missing=0.15)
        data = ppca_dataset(x)
        model = PPCAModel.from_data(data, k, perturb=0.3, seed=seed)
        values = model.parameter_set.unpack(model.parameter_set.initial_natural())
        mu, w, s2 = model.split_values(values)
        marginal = model.log_marginal(values, data.batch)
        exact = ppca_log_likelihood(x, mu.numpy(), w.numpy(), float(s2), per_row=True)
        mean, cov = model.posterior(values, data.batch)
        post = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
        gen = torch.Generator().manual_seed(seed)
        worst_identity = 0.0
        for _ in range(10):
            z = 3.0 * torch.randn(data.n_subjects, k, generator=gen, dtype=torch.float64)
            joint = model.log_likelihood(z, values, data.batch) + model.log_prior(z, values, data.batch)
            worst_identity = max(worst_identity, float((joint - post.log_prob(z) - marginal).abs().max()))
        model_rows.append({"log_marginal_vs_ppca_log_likelihood": float(np.abs(marginal.numpy() - exact).max()
                                                                         / np.abs(exact).max()),
                           "posterior_identity_abs": worst_identity})
    out["model"] = worst(model_rows)

    # recovery: replicate simulations from the model with known truth
    n, d, k, reps = 500, 4, 2, 200
    rng = np.random.default_rng(0)
    w_true, mu_true, s2_true = rng.normal(size=(d, k)), rng.normal(size=d), 0.3
    model = PPCAModel(mu_true, w_true, s2_true)
    design = ppca_dataset(np.zeros((n, d)))
    values = model.population_values(mu_true, w_true, s2_true)
    c_true = w_true @ w_true.T + s2_true * np.eye(d)
    se_c = np.sqrt((np.outer(np.diag(c_true), np.diag(c_true)) + c_true ** 2) / n)
    gen = torch.Generator().manual_seed(1)
    zs, wwt, s2s = [], [], []
    for _ in range(reps):
        z = model.sample_eta(values, design.batch, gen)
        x = ppca_matrix(design.with_dv(model.sample_y(z, values, design.batch, gen)))
        fit = fit_ppca(x, k)
        zs.append((fit.covariance() - c_true) / se_c)
        wwt.append(fit.loading_covariance())
        s2s.append(fit.noise_variance)
    zs = np.array(zs)
    out["recovery"] = {"n": n, "replicates": reps, "max_abs_z_single_fit": float(np.abs(zs).max()),
                       "sd_of_z_over_replicates (about 1)": float(zs.std(0).mean()),
                       # ML bias of W Wᵀ (eigenvalue spreading, O(1/n)), in units of one fit's sampling SE
                       "max_mean_wwt_bias_in_single_fit_se": float((np.abs(np.mean(wwt, 0) - w_true @ w_true.T)
                                                                    / se_c).max()),
                       "monte_carlo_se_of_that_bias_in_single_fit_se": 1.0 / math.sqrt(reps),
                       "mean_s2": float(np.mean(s2s)), "true_s2": s2_true}

    # the lead's variational EM on PPCA data (work in progress there; only the bound ordering is checked)
    from pmxgen.estimation.variational import VariationalEM
    x = simulate(100, 5, 2, 21, missing=0.1)
    data = ppca_dataset(x)
    model = PPCAModel.from_data(data, 2, perturb=0.3, seed=1)
    vem = VariationalEM(max_iter=1500, init="prior", covariance=None, importance_samples=500, posterior_draws=50,
                        seed=0).fit(model, data)
    ps = model.parameter_set
    values = ps.unpack(torch.tensor([vem.estimates[name] for name in ps.names], dtype=torch.float64))
    out["vem"] = {"status": vem.status, "elbo": vem.elbo["elbo"], "elbo_se": vem.elbo["se"],
                  "exact_loglik_at_vem_estimates": float(model.log_marginal(values, data.batch).sum()),
                  "importance_sampling_loglik": -vem.minus2ll / 2,
                  "importance_sampling_se": vem.importance_sampling["se"] / 2,
                  "maximum_loglik (em)": fit_ppca(x, 2, method="em").log_likelihood}
    out["seconds"] = round(time.perf_counter() - started, 1)
    (HERE / "ppca_agreement.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())

"""Amortized variational inference for latent neural-SDE population models.

:func:`fit_latent_sde` maximises the ELBO of :meth:`LatentSDEModel.elbo
<pmxgen.models.latent_sde.LatentSDEModel.elbo>` over all population parameters together — the
prior-drift network, the mechanistic rates θ, the diffusion, σ (on the unconstrained scale of
the model's :class:`~pmxgen.models.ParameterSet`) — and the amortized posterior (encoder and
posterior-drift network), by Adam with an exponentially decaying learning rate, reparameterised
paths, optional minibatches of subjects and optional linear KL annealing (torchsde's example).
Iteration k uses the seed ``seed·1000003 + k`` for its draws and Brownian paths, so a fit is
reproducible.

Stopping rule ("converged"): after ``min_iter`` iterations and the KL annealing, at the end of
every ``window`` iterations the mean ELBO of the last window is compared with the previous
window's; the fit has converged when the gain is below ``tol`` nats per observation *and* not
significant (< 2 standard errors of the difference of the two window means, from their
iteration-to-iteration spread). Otherwise it stops at ``max_iter`` with status
``"max_iterations"``. A non-finite ELBO or a failed SDE solve stops it with status ``"failed"``
and the reason in ``messages`` (the parameters of the last finite iteration are kept).

The result is a :class:`~pmxgen.estimation.FitResult`: θ and σ estimates, the network weights,
the history, and ``elbo`` (final ELBO re-estimated with ``elbo_samples`` fresh paths, its Monte
Carlo SE, ``minus2elbo``). There is no OFV or −2LL: the likelihood integrates over latent paths
and has no closed form; the ELBO bounds it from below, and the particle filter
(:meth:`LatentSDEModel.one_step_ahead_log_likelihood`) estimates it.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch

from ..errors import EstimationError, IntegrationError
from .results import FitResult

__all__ = ["fit_latent_sde"]

_NOT_ETA = ("latent SDE: each subject's latent is a path z(t), not a finite η; draw posterior paths with "
            "model.sample_posterior")


class _Subjects:
    """A minibatch of subjects: their padded tensors and IDs (what ``model.elbo`` reads)."""

    def __init__(self, batch, ids):
        self.batch, self.ids = batch, ids


def _check_int(name, v, low):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise EstimationError(f"fit_latent_sde: {name} must be an integer >= {low} (found {v!r})")
    return int(v)


def fit_latent_sde(model, data, *, max_iter: int = 500, n_samples: int = 8, batch_size: int | None = None,
                   learning_rate: float = 1e-2, lr_decay: float = 0.999, kl_anneal_iters: int = 0,
                   horizon: float | None = None, adjoint: bool = False, seed: int = 0, window: int = 50,
                   min_iter: int = 100, tol: float = 1e-3, elbo_samples: int = 64, callback=None) -> FitResult:
    """Fit ``model`` (a :class:`~pmxgen.models.latent_sde.LatentSDEModel`) to ``data`` by amortized VI.

    Parameters
    ----------
    model : LatentSDEModel or DeepLatentGaussianModel
        Fitted in place (its parameters and networks end at the estimates).
    data : Dataset
    max_iter : int
        Adam steps.
    n_samples : int
        Posterior paths per subject in each step.
    batch_size : int, optional
        Subjects per step (a random minibatch; the ELBO is scaled by N / batch_size). None: all.
    learning_rate, lr_decay : float
        Adam's step size, multiplied by ``lr_decay`` after every step.
    kl_anneal_iters : int
        The KL terms are weighted by min(1, (k+1)/kl_anneal_iters) in the loss (0: no annealing);
        the reported ELBO is always unweighted.
    horizon : float, optional
        End of the paths (default: the last record).
    adjoint : bool
        Gradients by the stochastic adjoint (``torchsde.sdeint_adjoint``).
    seed : int
    window, min_iter, tol
        The stopping rule (module docstring).
    elbo_samples : int
        Paths per subject for the final ELBO.
    callback : callable, optional
        Called as ``callback(entry)`` with each history entry.

    Examples
    --------
    >>> import pandas as pd, pmxgen
    >>> from pmxgen.models.latent_sde import LatentSDEModel
    >>> frame = pd.DataFrame({"ID": [1, 1, 2, 2], "TIME": [0.5, 1.0, 0.5, 1.0], "DV": [0.2, -0.1, 0.4, 0.3],
    ...                       "AMT": 0, "EVID": 0, "MDV": 0})
    >>> data = pmxgen.read_nonmem(frame, require_doses=False)
    >>> model = LatentSDEModel(1, mechanism="ou", network=False, hidden=8, context_dim=2, dt=0.25)
    >>> fit = fit_latent_sde(model, data, max_iter=3, n_samples=2, elbo_samples=4)
    >>> fit.status, fit.ofv is None, "elbo" in fit.elbo
    ('max_iterations', True, True)
    """
    from ..models.latent_sde import LatentSDEModel
    from ..models.weights import weights_state
    if not isinstance(model, LatentSDEModel):
        raise EstimationError(f"fit_latent_sde needs a LatentSDEModel (found {type(model).__name__})")
    max_iter, n_samples = _check_int("max_iter", max_iter, 1), _check_int("n_samples", n_samples, 1)
    window, min_iter = _check_int("window", window, 2), _check_int("min_iter", min_iter, 0)
    kl_anneal_iters, elbo_samples = _check_int("kl_anneal_iters", kl_anneal_iters, 0), _check_int(
        "elbo_samples", elbo_samples, 1)
    if not (learning_rate > 0 and 0 < lr_decay <= 1):
        raise EstimationError(f"fit_latent_sde: need learning_rate > 0 and 0 < lr_decay <= 1 (found {learning_rate}, "
                              f"{lr_decay})")
    started = time.perf_counter()
    dataset = data.to(device=model.device) if hasattr(data, "to") and hasattr(data, "ids") else data
    batch = dataset.batch
    n = batch.n_subjects
    n_obs = int(batch.obs.mask.sum())
    if batch_size is not None:
        batch_size = min(_check_int("batch_size", batch_size, 1), n)
    model._encode(batch, dataset.ids)                       # clear error for subjects without observations
    model.networks["encoder"].fit_scaling(batch)
    params = model.parameters()
    opt = torch.optim.Adam(params, lr=learning_rate)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=lr_decay)
    perm_gen = torch.Generator().manual_seed(int(seed) + 17)
    history, trace, messages = [], [], []
    status = "max_iterations"
    last_good = [p.detach().clone() for p in params]
    for k in range(max_iter):
        sub = dataset
        if batch_size is not None and batch_size < n:
            index = torch.randperm(n, generator=perm_gen)[:batch_size]
            sub = _Subjects(batch.select(index.to(batch.device)), [dataset.ids[i] for i in index.tolist()])
        beta = 1.0 if kl_anneal_iters == 0 else min(1.0, (k + 1) / kl_anneal_iters)
        opt.zero_grad()
        try:
            terms = model.elbo(sub, n_samples=n_samples, seed=int(seed) * 1000003 + k, horizon=horizon,
                               adjoint=adjoint)
        except IntegrationError as exc:
            status = "failed"
            messages.append(f"iteration {k}: {exc}")
            break
        scale = n / sub.batch.n_subjects
        ll, kl = terms.log_likelihood.sum() * scale, (terms.kl_initial + terms.kl_path).sum() * scale
        loss = -(ll - beta * kl) / max(n_obs, 1)
        elbo = float((ll - kl).detach())
        if not math.isfinite(elbo) or not math.isfinite(float(loss.detach())):
            status = "failed"
            messages.append(f"iteration {k}: the ELBO is not finite ({elbo}); a network or the residual error "
                            f"returned NaN/inf — lower the learning rate, rescale the data (dose_scale, obs_scale) "
                            f"or check the initial values")
            break
        loss.backward()
        grads_ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
        if not grads_ok:
            status = "failed"
            messages.append(f"iteration {k}: a gradient is not finite (NaN/inf from a network or the solver); lower "
                            f"the learning rate or dt")
            break
        last_good = [p.detach().clone() for p in params]
        opt.step()
        sched.step()
        entry = {"iteration": k, "elbo": elbo, "minus2elbo": -2.0 * elbo, "log_likelihood": float(ll.detach()),
                 "kl": float(kl.detach()), "kl_weight": beta, **model.estimates()}
        history.append(entry)
        trace.append(elbo)
        if callback is not None:
            callback(entry)
        done = k + 1
        if done >= max(min_iter, kl_anneal_iters) and done % window == 0 and done >= 2 * window:
            new, old = np.asarray(trace[-window:]), np.asarray(trace[-2 * window:-window])
            gain = new.mean() - old.mean()
            se = math.sqrt(new.var(ddof=1) / window + old.var(ddof=1) / window)
            if gain < 2 * se and gain < tol * max(n_obs, 1):
                status = "converged"
                messages.append(f"converged at iteration {k}: the mean ELBO of the last {window} iterations gained "
                                f"{gain:.4g} over the previous {window} (< 2 SE = {2 * se:.4g} and < tol·N_obs = "
                                f"{tol * max(n_obs, 1):.4g})")
                break
    if status == "failed":
        with torch.no_grad():
            for p, v in zip(params, last_good):
                p.copy_(v)
    if status == "max_iterations":
        messages.append(f"stopped at max_iter = {max_iter} without meeting the stopping rule")
    return _result(model, dataset, status, messages, history, started, horizon, elbo_samples, seed,
                   dict(max_iter=max_iter, n_samples=n_samples, batch_size=batch_size, learning_rate=learning_rate,
                        lr_decay=lr_decay, kl_anneal_iters=kl_anneal_iters, horizon=horizon, adjoint=adjoint,
                        seed=seed, window=window, min_iter=min_iter, tol=tol, elbo_samples=elbo_samples,
                        solver=model.solver, method=model.method, dt=model.dt), weights_state)


def _result(model, data, status, messages, history, started, horizon, elbo_samples, seed, options, weights_state):
    batch = data.batch
    ps = model.parameter_set
    elbo_dict = None
    unavailable = {"ofv": "latent SDE: the likelihood integrates over latent paths and has no closed form; the "
                          "ELBO (a lower bound) is in `elbo`, and model.one_step_ahead_log_likelihood estimates it by "
                          "particle filtering",
                   "ebe": _NOT_ETA, "ebe_covariance": _NOT_ETA, "shrinkage": _NOT_ETA}
    unavailable["minus2ll"] = unavailable["ofv"]
    obs_table = pd.DataFrame()
    indiv = pd.DataFrame({"ID": list(data.ids)})
    try:
        with torch.no_grad():
            terms = model.elbo(data, n_samples=elbo_samples, seed=int(seed) + 999_983, horizon=horizon)
            elbo = float(terms.total)
            if math.isfinite(elbo):
                elbo_dict = {"elbo": elbo, "se": terms.se, "bound": "elbo", "minus2elbo": -2.0 * elbo,
                             "n_samples": elbo_samples, "log_likelihood": float(terms.log_likelihood.sum()),
                             "kl_initial": float(terms.kl_initial.sum()), "kl_path": float(terms.kl_path.sum())}
            post = model.sample_posterior(data, n_paths=elbo_samples, seed=int(seed) + 1)
            prior = model.sample_prior(data, n_paths=elbo_samples, seed=int(seed) + 2)
            mean, log_sd, _ = model._encode(batch, data.ids)
            m0, s0 = model.z0_prior(model.values())
        mask = batch.obs.mask.cpu().numpy()
        ipred = post.prediction.mean(0).cpu().numpy()
        pred = prior.prediction.mean(0).cpu().numpy()
        subject = np.nonzero(mask)[0]
        obs_table = pd.DataFrame({
            "ID": np.asarray(data.ids, dtype=object)[subject].tolist(), "TIME": batch.obs.time.cpu().numpy()[mask],
            "DV": batch.obs.dv.cpu().numpy()[mask], "CMT": batch.obs.cmt.cpu().numpy()[mask],
            "BLQ": batch.obs.blq.cpu().numpy()[mask].astype(int), "PRED": pred[mask], "IPRED": ipred[mask],
            "RES": batch.obs.dv.cpu().numpy()[mask] - ipred[mask], "ROW": batch.obs.row.cpu().numpy()[mask]})
        obs_table = obs_table.sort_values("ROW", kind="stable").reset_index(drop=True)
        z0 = (m0 + s0 * mean).cpu().numpy()
        for k in range(model.latent_dim):
            indiv[f"Z0_MEAN({k + 1})"] = z0[:, k]
            indiv[f"Z0_SD({k + 1})"] = (s0 * torch.exp(log_sd)).cpu().numpy()[:, k]
    except (IntegrationError, EstimationError) as exc:
        status = "failed"
        messages.append(f"at the estimates: {exc}")
    if elbo_dict is None:
        messages.append("the final ELBO is not finite")
        status = "failed"
    phi = ps.from_unconstrained(model.unconstrained.detach())
    return FitResult(
        method="latent_sde_vi", model_name=model.name, data_source=str(getattr(data, "source", "")),
        parameter_names=ps.all_names, estimated_names=ps.names, estimates=ps.full_natural(phi),
        se={name: float("nan") for name in ps.all_names}, fixed={name: name not in ps.names for name in ps.all_names},
        covariance=None, covariance_method=None, covariance_status="not requested", covariance_message="",
        condition_number=float("nan"), ofv=None, minus2ll=None, n_observations=int(batch.obs.mask.sum()),
        n_subjects=batch.n_subjects, ids=tuple(data.ids), eta_names=(), observations=obs_table, individual=indiv,
        history=tuple(history), status=status, messages=tuple(messages), elapsed_seconds=time.perf_counter() - started,
        options=options, data_recipe=getattr(data, "recipe", None), elbo=elbo_dict,
        network_weights=weights_state(model) or None, unavailable=unavailable)

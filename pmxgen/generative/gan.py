"""Adversarial generators: the GAN (non-saturating loss) and the Wasserstein GAN with gradient penalty.

Both learn a generator network ``G(z, c)`` (``z ~ N(0, I)`` of size ``latent_dim``, ``c`` the
encoded conditions, concatenated to the input) against a critic ``D(x, c)`` on the standardised
encoding of :mod:`.tabular`, with their own trainer (:meth:`AdversarialGenerator._train`):

- **GAN** (Goodfellow et al. 2014, the non-saturating generator loss of their section 3):
  critic (discriminator) loss ``softplus(−D(x)) + softplus(D(G(z)))`` (binary cross-entropy of
  real against generated), generator loss ``softplus(−D(G(z)))``.
- **WGAN-GP** (Gulrajani et al. 2017, "Improved training of Wasserstein GANs", algorithm 1):
  critic loss ``D(G(z)) − D(x) + λ (‖∇ₓ̂ D(x̂)‖ − 1)²`` with ``x̂ = ε x + (1 − ε) G(z)``,
  ``ε ~ U(0, 1)`` per row (:func:`gradient_penalty`), ``critic_steps`` critic updates per generator
  update, generator loss ``−D(G(z))``, Adam with ``betas = (0.5, 0.9)`` (the paper's toy code) and a
  default ``λ = 1`` (see :class:`WGANGPGenerator`).

One epoch is ``ceil(n_train / batch_size)`` generator updates, each after ``critic_steps``
critic updates on minibatches drawn (seeded) from the training rows, discrete columns
dequantised as in the default trainer. A GAN's losses say little about the quality of its
samples, so early stopping watches a sample-based criterion instead: every ``eval_every`` epochs
the squared MMD (:func:`pmxgen.generative.kernels.mmd2`, multiscale Gaussian kernel with
bandwidths ``eval_bandwidth_factors`` × the median distance of the training rows) between ``eval_samples`` generated rows (the same latent
draws each time) and the held-out rows; the generator with the smallest held-out MMD is kept.
Status: "converged" when the held-out MMD has not improved for ``patience`` evaluations,
"max_iterations" when ``max_epochs`` came first (the best state is kept), "failed" when a loss
or the generated rows became non-finite (the best finite state is kept, and the fit refuses to
sample). Without a held-out split (``validation_fraction=0``) the last state is kept and the
status is "max_iterations". Conditions are compared jointly: generated ``(G(z, c), c)`` against
held-out ``(x, c)``.

There is no tractable density (``log_prob`` raises): compare by sample-based metrics.

Small tables: on the 442-patient diabetes panel (309 training rows, 10 columns;
``benchmarks/gen_diabetes_comparison.py``, 3 splits) neither GAN beat the multivariate normal
baseline (classifier two-sample accuracy 0.8–0.95 against 0.56, with or without early stopping,
batch 32): adversarial training needs more rows than that, or a simpler generator.

Examples
--------
>>> import torch
>>> from pmxgen.generative.gan import WGANGPGenerator
>>> x = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 + 1
>>> gen = WGANGPGenerator(hidden=16, max_epochs=3, batch_size=100, seed=0).fit(x)
>>> gen.status_, gen.sample(5, seed=1).shape
('max_iterations', torch.Size([5, 2]))
>>> len(gen.history_), sorted(gen.history_[0])
(3, ['critic', 'epoch', 'generator', 'validation'])
"""
from __future__ import annotations

import math
import sys

import torch
from torch import nn

from ..errors import ModelError
from .generator import Generator, register_generator
from ._mlp import mlp
from .kernels import mmd2, multiscale_bandwidths

__all__ = ["AdversarialGenerator", "GANGenerator", "WGANGPGenerator", "gradient_penalty"]


def _join(x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    return x if c is None else torch.cat([x, c], 1)


class _AdversarialNetwork(nn.Module):
    """Generator and critic together (both are saved)."""

    def __init__(self, dim: int, cond_dim: int, latent_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.generator = mlp(latent_dim + cond_dim, hidden, layers, dim, nn.SiLU)
        self.critic = mlp(dim + cond_dim, hidden, layers, 1, lambda: nn.LeakyReLU(0.2))


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor | None = None, *,
                     weight: float = 10.0, eps: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP penalty ``weight · mean_i (‖∇ₓ D(x̂_i, c_i)‖₂ − 1)²`` at ``x̂ = ε x + (1 − ε) x̃``.

    Parameters
    ----------
    critic : callable
        ``critic(x)`` → ``[n, 1]`` or ``[n]`` scores; it receives ``[x̂, c]`` concatenated when ``c`` is given
        (the gradient is taken with respect to the ``x̂`` part only).
    real, fake : Tensor ``[n, d]``
        Data rows and generated rows.
    c : Tensor ``[n, cond_dim]``, optional
        Conditions of each row.
    weight : float
        λ (10 in Gulrajani et al. 2017).
    eps : Tensor ``[n]``, optional
        Interpolation weights; drawn ``U(0, 1)`` from ``generator`` when omitted.
    generator : torch.Generator, optional
        Source of ``eps``.

    Returns
    -------
    Tensor
        A differentiable scalar (graph kept so that it can be minimised over the critic's weights).

    Examples
    --------
    A linear critic ``D(x) = w·x`` has gradient ``w`` everywhere, so the penalty is ``λ (‖w‖ − 1)²``:

    >>> import torch
    >>> w = torch.tensor([3.0, 4.0], dtype=torch.float64)
    >>> x, y = torch.zeros(5, 2, dtype=torch.float64), torch.ones(5, 2, dtype=torch.float64)
    >>> float(gradient_penalty(lambda v: v @ w, x, y, weight=10.0, generator=torch.Generator().manual_seed(0)))
    160.0
    """
    n = real.shape[0]
    if fake.shape != real.shape:
        raise ModelError(f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} rows differ in shape")
    if eps is None:
        eps = torch.rand(n, generator=generator, dtype=real.dtype, device=real.device)
    eps = eps.reshape(n, 1).to(dtype=real.dtype, device=real.device)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(_join(x_hat, c))
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return weight * ((grad.norm(dim=1) - 1) ** 2).mean()


class AdversarialGenerator(Generator):
    """Shared trainer of :class:`GANGenerator` and :class:`WGANGPGenerator` (see the module docstring).

    Parameters
    ----------
    latent_dim : int
        Size of the generator's Gaussian input ``z``.
    hidden : int
        Width of the hidden layers (generator and critic).
    layers : int
        Number of hidden layers (generator and critic).
    critic_steps : int
        Critic updates per generator update.
    betas : list of two floats
        Adam's ``(β₁, β₂)`` for both networks.
    critic_learning_rate : float, optional
        The critic's step size (default: ``learning_rate``).
    eval_every : int
        Epochs between two held-out MMD evaluations.
    eval_samples : int
        Generated rows per held-out MMD evaluation.
    eval_bandwidth_factors : list of float
        Kernel bandwidths of the held-out MMD, as multiples of the median distance of the training rows
        (small factors make the criterion see fine structure, e.g. the squares of a checkerboard).
    **common
        The keywords shared by every :class:`~pmxgen.generative.generator.Generator` (``patience`` counts
        evaluations).
    """

    def __init__(self, *, latent_dim: int = 8, hidden: int = 64, layers: int = 2, critic_steps: int = 1,
                 betas: tuple | list = (0.5, 0.999), critic_learning_rate: float | None = None,
                 eval_every: int = 1, eval_samples: int = 1000,
                 eval_bandwidth_factors: tuple | list = (0.125, 0.25, 0.5, 1.0, 2.0), **common) -> None:
        super().__init__(**common)
        self.latent_dim, self.hidden, self.layers, self.critic_steps = latent_dim, hidden, layers, critic_steps
        self.betas, self.critic_learning_rate = [float(b) for b in betas], critic_learning_rate
        self.eval_every, self.eval_samples = eval_every, eval_samples
        self.eval_bandwidth_factors = [float(f) for f in eval_bandwidth_factors]

    def _validate(self) -> None:
        super()._validate()
        checks = [("latent_dim", self.latent_dim >= 1), ("hidden", self.hidden >= 1), ("layers", self.layers >= 0),
                  ("critic_steps", self.critic_steps >= 1), ("eval_every", self.eval_every >= 1),
                  ("eval_samples", self.eval_samples >= 2),
                  ("eval_bandwidth_factors", len(self.eval_bandwidth_factors) >= 1
                   and min(self.eval_bandwidth_factors) > 0),
                  ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)),
                  ("critic_learning_rate", self.critic_learning_rate is None or self.critic_learning_rate > 0)]
        for name, ok in checks:
            if not ok:
                raise ModelError(f"{type(self).__name__}: invalid {name}={getattr(self, name)!r}")

    def _build(self, dim: int, cond_dim: int) -> nn.Module:
        return _AdversarialNetwork(dim, cond_dim, self.latent_dim, self.hidden, self.layers)

    # -- the two losses (per family) ------------------------------------------------------------
    def _critic_loss(self, real, fake, c, rng) -> torch.Tensor:
        raise NotImplementedError

    def _generator_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- sampling -------------------------------------------------------------------------------
    def _generate(self, n: int, c: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=torch.float64, device=generator.device)
        return self.network.generator(_join(z.to(self.torch_device), c))

    def _sample(self, n, c, generator):
        return self._generate(n, c, generator)

    def _heldout_mmd(self, x_val, c_val, bandwidths) -> float:
        reps = max(1, math.ceil(self.eval_samples / x_val.shape[0]))
        c_rep = None if c_val is None else c_val.repeat(reps, 1)
        m = x_val.shape[0] * reps if c_val is not None else self.eval_samples
        gen = torch.Generator(device=self.torch_device).manual_seed(self.seed + 7919)
        with torch.no_grad():
            fake = self._generate(m, c_rep, gen)
            return float(mmd2(_join(fake, c_rep), _join(x_val, c_val), bandwidths))

    # -- training -------------------------------------------------------------------------------
    def _train(self, x, c, x_val, c_val):
        net, rng = self.network, self._generator
        device = x.device
        opt_g = torch.optim.Adam(net.generator.parameters(), lr=self.learning_rate, betas=tuple(self.betas))
        opt_d = torch.optim.Adam(net.critic.parameters(), lr=self.critic_learning_rate or self.learning_rate,
                                 betas=tuple(self.betas))
        bandwidths = multiscale_bandwidths(_join(x, c), factors=self.eval_bandwidth_factors)
        n, batch = x.shape[0], min(self.batch_size, x.shape[0])
        steps = math.ceil(n / batch)
        best, best_state, best_epoch, bad, history = math.inf, None, 0, 0, []

        def draw():
            idx = torch.randint(0, n, (batch,), generator=rng, device=rng.device).to(device)
            cb = None if c is None else c[idx]
            return self.transform_.dequantize(x[idx], rng), cb

        def fail(what, epoch):
            if best_state is not None:
                net.load_state_dict(best_state)
            kept = "the best held-out state is kept" if best_state is not None else "no finite state to keep"
            return "failed", f"the {what} became non-finite at epoch {epoch}; {kept}", history

        for epoch in range(1, self.max_epochs + 1):
            sum_d = sum_g = 0.0
            for _ in range(steps):
                for _ in range(self.critic_steps):
                    real, cb = draw()
                    with torch.no_grad():
                        fake = self._generate(batch, cb, rng)
                    loss_d = self._critic_loss(real, fake, cb, rng)
                    if not torch.isfinite(loss_d):
                        return fail("critic loss", epoch)
                    opt_d.zero_grad()
                    loss_d.backward()
                    opt_d.step()
                _, cb = draw()
                fake = self._generate(batch, cb, rng)
                loss_g = self._generator_loss(net.critic(_join(fake, cb)))
                if not torch.isfinite(loss_g):
                    return fail("generator loss", epoch)
                opt_g.zero_grad()
                loss_g.backward()
                opt_g.step()
                sum_d += float(loss_d.detach())
                sum_g += float(loss_g.detach())
            record = {"epoch": epoch, "critic": sum_d / steps, "generator": sum_g / steps}
            if x_val is not None and (epoch % self.eval_every == 0 or epoch == self.max_epochs):
                score = self._heldout_mmd(x_val, c_val, bandwidths)
                record["validation"] = score
                if not math.isfinite(score):
                    return fail("generated sample", epoch)
                if best_state is None or score < best:
                    best, best_epoch, bad = score, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                else:
                    bad += 1
            history.append(record)
            if self.progress:
                print(f"\r{self.name}: epoch {epoch}/{self.max_epochs} critic {record['critic']:.4f} generator "
                      f"{record['generator']:.4f}" + (f" held-out MMD² {record['validation']:.5f}"
                                                      if "validation" in record else ""),
                      end="", file=sys.stderr, flush=True)
            if x_val is not None and bad >= self.patience:
                net.load_state_dict(best_state)
                self._end_progress()
                return "converged", (f"held-out MMD² did not improve for {self.patience} evaluations; best "
                                     f"{best:.4g} kept (epoch {best_epoch})"), history
        self._end_progress()
        if x_val is None:
            return "max_iterations", f"stopped at max_epochs={self.max_epochs} (no held-out split: last state)", history
        net.load_state_dict(best_state)
        return "max_iterations", (f"stopped at max_epochs={self.max_epochs}; best held-out MMD² {best:.4g} kept "
                                  f"(epoch {best_epoch})"), history

    def _end_progress(self) -> None:
        if self.progress:
            print(file=sys.stderr)


@register_generator
class GANGenerator(AdversarialGenerator):
    """Generative adversarial network with the non-saturating generator loss (see the module docstring).

    Parameters
    ----------
    **params
        See :class:`AdversarialGenerator` (defaults: one critic step per generator step, Adam ``betas=(0.5, 0.999)``).
    """

    name = "gan"

    def _critic_loss(self, real, fake, c, rng):
        d_real = self.network.critic(_join(real, c))
        d_fake = self.network.critic(_join(fake, c))
        return nn.functional.softplus(-d_real).mean() + nn.functional.softplus(d_fake).mean()

    def _generator_loss(self, fake_scores):
        return nn.functional.softplus(-fake_scores).mean()


@register_generator
class WGANGPGenerator(AdversarialGenerator):
    """Wasserstein GAN with gradient penalty (Gulrajani et al. 2017; see the module docstring).

    Parameters
    ----------
    gp_weight : float
        λ of the gradient penalty (:func:`gradient_penalty`). The paper uses 10 for images and 0.1 for its toy
        2-D tasks (its released ``gan_toy.py``); on standardised tabular data 10 made training oscillate in our
        runs on 8 Gaussians (held-out MMD² no better than the MVN's), 1 trained well, hence the default 1.
    critic_steps : int
        Critic updates per generator update (5 in the paper).
    betas : list of two floats
        Adam's ``(β₁, β₂)`` (``(0, 0.9)`` in the paper's algorithm 1, ``(0.5, 0.9)`` in its toy code; the latter
        is the default).
    **params
        See :class:`AdversarialGenerator`.
    """

    name = "wgan_gp"

    def __init__(self, *, gp_weight: float = 1.0, critic_steps: int = 5, betas: tuple | list = (0.5, 0.9),
                 **params) -> None:
        super().__init__(critic_steps=critic_steps, betas=betas, **params)
        self.gp_weight = gp_weight

    def _validate(self) -> None:
        super()._validate()
        if not self.gp_weight >= 0:
            raise ModelError(f"{type(self).__name__}: gp_weight must be >= 0 (found {self.gp_weight})")

    def _critic_loss(self, real, fake, c, rng):
        critic = self.network.critic
        wasserstein = critic(_join(fake, c)).mean() - critic(_join(real, c)).mean()
        return wasserstein + gradient_penalty(critic, real, fake, c, weight=self.gp_weight, generator=rng)

    def _generator_loss(self, fake_scores):
        return -fake_scores.mean()

"""Population parameters: fixed effects θ, random-effect covariance Ω and residual variances σ.

A :class:`ParameterSet` knows every parameter's name, initial value, bounds and whether it
is fixed, and maps the *estimated* ones between three forms:

* the **natural vector** φ (θ as given, Ω elements and σ on the variance scale, as NONMEM
  reports them) — used for the covariance step and for reporting;
* the **unconstrained vector** x (log / logit transforms for bounded θ, log-Cholesky for
  Ω blocks, log for σ) — what the optimizer moves;
* a :class:`PopulationValues` with ``theta`` (name → tensor), ``omega`` (``[K, K]``) and
  ``sigma`` (name → tensor) — what models compute with.

φ may carry leading batch dimensions (``[N, P]``): every value then has that leading shape.
The estimators use this to get each subject's gradient in one backward pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import ModelError

__all__ = ["Theta", "OmegaBlock", "Sigma", "ParameterSet", "PopulationValues", "omega_blocks"]


@dataclass(frozen=True)
class Theta:
    """A fixed effect with its initial value, bounds and whether it is fixed.

    Examples
    --------
    >>> Theta("CL", 3.0, lower=0.0)
    Theta(name='CL', init=3.0, lower=0.0, upper=inf, fixed=False)
    """

    name: str
    init: float
    lower: float = -math.inf
    upper: float = math.inf
    fixed: bool = False

    def __post_init__(self):
        for what in ("init", "lower", "upper"):
            v = getattr(self, what)
            if not isinstance(v, (int, float, np.floating, np.integer)) or isinstance(v, bool) or math.isnan(v):
                raise ModelError(f"theta {self.name}: {what} must be a number (found {v!r})")
            object.__setattr__(self, what, float(v))
        if not math.isfinite(self.init):
            raise ModelError(f"theta {self.name}: the initial value must be finite (found {self.init})")
        if not self.lower < self.upper:
            raise ModelError(f"theta {self.name}: lower bound {self.lower} must be below upper bound {self.upper}")
        if not self.fixed and not (self.lower < self.init < self.upper):
            raise ModelError(f"theta {self.name}: initial value {self.init} must lie strictly inside its bounds "
                             f"({self.lower}, {self.upper})")

    @classmethod
    def from_spec(cls, name: str, spec) -> "Theta":
        """A Theta from a number, a NONMEM-style tuple ``(lower, init, upper)`` / ``(lower, init)``, or a Theta."""
        if isinstance(spec, Theta):
            if spec.name != name:
                raise ModelError(f"theta given under name {name!r} is named {spec.name!r}")
            return spec
        if isinstance(spec, (tuple, list)):
            if len(spec) == 2:
                return cls(name, spec[1], lower=spec[0])
            if len(spec) == 3:
                return cls(name, spec[1], lower=spec[0], upper=spec[2])
            raise ModelError(f"theta {name}: give (lower, init) or (lower, init, upper); found {spec!r}")
        return cls(name, spec)


@dataclass(frozen=True)
class OmegaBlock:
    """A block of the random-effect covariance Ω (variance scale), as NONMEM's $OMEGA BLOCK.

    Parameters
    ----------
    names : sequence of str
        The random effects (η) in the block.
    init : sequence of float or matrix
        Initial variances (a diagonal block) or the full initial covariance matrix.
    diagonal : bool
        Estimate only the variances (off-diagonal elements are 0). Default: True for a
        vector ``init``, False for a matrix.
    fixed : bool
        Keep the whole block at ``init``.

    Examples
    --------
    >>> OmegaBlock(["CL", "V"], [[0.09, 0.02], [0.02, 0.04]]).n_estimated
    3
    >>> OmegaBlock(["KA"], [0.1], fixed=True).n_estimated
    0
    """

    names: tuple[str, ...]
    init: np.ndarray = field(repr=False)
    diagonal: bool | None = None
    fixed: bool = False

    def __post_init__(self):
        names = tuple(str(n) for n in self.names)
        if not names or len(set(names)) != len(names):
            raise ModelError(f"omega block needs distinct η names (found {list(self.names)})")
        init = np.asarray(self.init, dtype=float)
        k = len(names)
        if init.ndim == 1:
            if init.shape != (k,):
                raise ModelError(f"omega block {names}: give {k} initial variances (found {init.shape[0]})")
            init = np.diag(init)
            diagonal = True if self.diagonal is None else self.diagonal
        elif init.shape == (k, k):
            diagonal = False if self.diagonal is None else self.diagonal
            if not np.allclose(init, init.T):
                raise ModelError(f"omega block {names}: the initial matrix is not symmetric")
            if diagonal and np.any(init[~np.eye(k, dtype=bool)] != 0):
                raise ModelError(f"omega block {names}: diagonal=True but the initial matrix has non-zero "
                                 f"covariances; give variances only, or diagonal=False to estimate them")
        else:
            raise ModelError(f"omega block {names}: initial values of shape {init.shape}; expected ({k},) or ({k}, {k})")
        if not np.all(np.isfinite(init)):
            raise ModelError(f"omega block {names}: initial values must be finite")
        try:
            np.linalg.cholesky(init)
        except np.linalg.LinAlgError:
            raise ModelError(f"omega block {names}: the initial matrix is not positive definite; give positive "
                             f"variances and |correlations| < 1") from None
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "init", init)
        object.__setattr__(self, "diagonal", bool(diagonal))

    @property
    def size(self) -> int:
        return len(self.names)

    @property
    def n_estimated(self) -> int:
        if self.fixed:
            return 0
        return self.size if self.diagonal else self.size * (self.size + 1) // 2

    def label(self, r: int, c: int) -> str:
        """The reported name of element (r, c): ``OMEGA(KA)`` on the diagonal, ``OMEGA(CL,KA)`` below it."""
        return f"OMEGA({self.names[r]})" if r == c else f"OMEGA({self.names[r]},{self.names[c]})"

    def element_index(self) -> list[tuple[int, int]]:
        """(row, column) of the estimated elements within the block, in reporting order."""
        if self.diagonal:
            return [(i, i) for i in range(self.size)]
        return [(i, j) for i in range(self.size) for j in range(i + 1)]


@dataclass(frozen=True)
class Sigma:
    """A residual-error variance (σ², NONMEM's $SIGMA), with its initial value.

    Examples
    --------
    >>> Sigma("ADD", 0.25)
    Sigma(name='ADD', init=0.25, fixed=False)
    """

    name: str
    init: float
    fixed: bool = False

    def __post_init__(self):
        v = self.init
        if not isinstance(v, (int, float, np.floating, np.integer)) or isinstance(v, bool) or not (v > 0) \
                or not math.isfinite(v):
            raise ModelError(f"sigma {self.name}: the initial variance must be a finite number > 0 (found {v!r})")
        object.__setattr__(self, "init", float(v))


def omega_blocks(spec) -> list[OmegaBlock]:
    """Ω blocks from a dict ``{name: variance}`` (diagonal), one block, or a list of blocks."""
    if spec is None:
        return []
    if isinstance(spec, OmegaBlock):
        return [spec]
    if isinstance(spec, Mapping):
        return [OmegaBlock([k], [v]) for k, v in spec.items()]
    if isinstance(spec, Sequence) and all(isinstance(b, OmegaBlock) for b in spec):
        return list(spec)
    raise ModelError("omega must be a dict {eta name: variance}, an OmegaBlock or a list of OmegaBlocks "
                     f"(found {type(spec).__name__})")


@dataclass(frozen=True)
class PopulationValues:
    """Parameter values as models use them: θ by name, Ω ``[..., K, K]``, σ² by name."""

    theta: dict[str, torch.Tensor]
    omega: torch.Tensor
    sigma: dict[str, torch.Tensor]


_LOG_FLOOR = 1e-300


class ParameterSet:
    """The θ, Ω and σ of a model, with the maps between natural, unconstrained and model forms.

    Parameters
    ----------
    theta : sequence of Theta
    omega : sequence of OmegaBlock
        Blocks in η order; the η names of all blocks together are the model's random effects.
    sigma : sequence of Sigma

    Examples
    --------
    >>> ps = ParameterSet([Theta("CL", 3.0, lower=0)], [OmegaBlock(["CL"], [0.1])], [Sigma("ADD", 0.5)])
    >>> ps.names
    ('CL', 'OMEGA(CL)', 'SIGMA(ADD)')
    >>> phi = ps.initial_natural()
    >>> bool(torch.allclose(ps.from_unconstrained(ps.to_unconstrained(phi)), phi))
    True
    """

    def __init__(self, theta: Sequence[Theta], omega: Sequence[OmegaBlock], sigma: Sequence[Sigma]):
        self.theta = tuple(theta)
        self.omega = tuple(omega)
        self.sigma = tuple(sigma)
        names = [t.name for t in self.theta]
        if len(set(names)) != len(names):
            raise ModelError(f"theta names must be distinct (found {names})")
        eta = [n for b in self.omega for n in b.names]
        if len(set(eta)) != len(eta):
            raise ModelError(f"each η may appear in one omega block only (found {eta})")
        sig = [s.name for s in self.sigma]
        if len(set(sig)) != len(sig):
            raise ModelError(f"sigma names must be distinct (found {sig})")
        self.eta_names: tuple[str, ...] = tuple(eta)
        self._offsets = np.cumsum([0] + [b.size for b in self.omega]).tolist()

        entries = []  # (kind, index, detail)
        for i, t in enumerate(self.theta):
            entries.append(("theta", i, None, t.name, t.fixed))
        for bi, b in enumerate(self.omega):
            idx = b.element_index()
            for (r, c) in idx:
                label = b.label(r, c)
                entries.append(("omega", bi, (r, c), label, b.fixed))
        for i, s in enumerate(self.sigma):
            entries.append(("sigma", i, None, f"SIGMA({s.name})", s.fixed))
        self._entries = entries
        #: Names of all reported parameters (estimated and fixed) in order.
        self.all_names: tuple[str, ...] = tuple(e[3] for e in entries)
        #: Names of the estimated parameters, the order of φ.
        self.names: tuple[str, ...] = tuple(e[3] for e in entries if not e[4])

    # ------------------------------------------------------------------ sizes
    @property
    def n_estimated(self) -> int:
        return len(self.names)

    @property
    def n_eta(self) -> int:
        return len(self.eta_names)

    def kind_of(self, name: str) -> str:
        """'theta', 'omega' or 'sigma'."""
        for e in self._entries:
            if e[3] == name:
                return e[0]
        raise ModelError(f"unknown parameter {name!r}; parameters are {', '.join(self.all_names)}")

    # ----------------------------------------------------------------- values
    def initial_natural(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """φ at the initial values."""
        return torch.tensor([v for v, e in zip(self._all_initial(), self._entries) if not e[4]],
                            dtype=dtype, device=device)

    def _all_initial(self) -> list[float]:
        out = []
        for kind, i, rc, _, _ in self._entries:
            if kind == "theta":
                out.append(self.theta[i].init)
            elif kind == "omega":
                out.append(float(self.omega[i].init[rc]))
            else:
                out.append(self.sigma[i].init)
        return out

    def with_initial(self, natural: Mapping[str, float]) -> "ParameterSet":
        """A copy whose initial values are replaced by ``natural`` (name → value, natural scale)."""
        unknown = [k for k in natural if k not in self.all_names]
        if unknown:
            raise ModelError(f"unknown parameters {unknown}; parameters are {list(self.all_names)}")
        theta = [Theta(t.name, natural.get(t.name, t.init), t.lower, t.upper, t.fixed) for t in self.theta]
        blocks = []
        for b in self.omega:
            m = b.init.copy()
            for r in range(b.size):
                for c in range(r + 1):
                    key = b.label(r, c)
                    if key in natural:
                        m[r, c] = m[c, r] = natural[key]
            blocks.append(OmegaBlock(b.names, m if not b.diagonal else np.diag(m), b.diagonal, b.fixed))
        sigma = [Sigma(s.name, natural.get(f"SIGMA({s.name})", s.init), s.fixed) for s in self.sigma]
        return ParameterSet(theta, blocks, sigma)

    def with_fixed(self, names) -> "ParameterSet":
        """A copy with the parameters ``names`` fixed at their initial values.

        θ and σ are fixed one by one. Ω is fixed by blocks, as in NONMEM: an element of a
        diagonal block is split off into its own block (the same Ω), while a full block is fixed
        only when all of its elements are named.

        Examples
        --------
        >>> ps = ParameterSet([Theta("CL", 3.0, lower=0)], [OmegaBlock(["KA", "CL"], [0.4, 0.1])], [Sigma("ADD", 0.5)])
        >>> ps.with_fixed(["CL", "OMEGA(KA)"]).names
        ('OMEGA(CL)', 'SIGMA(ADD)')
        """
        names = [str(n) for n in names]
        unknown = [k for k in names if k not in self.all_names]
        if unknown:
            raise ModelError(f"unknown parameters {unknown}; parameters are {list(self.all_names)}")
        chosen = set(names)
        theta = [Theta(t.name, t.init, t.lower, t.upper, t.fixed or t.name in chosen) for t in self.theta]
        blocks = []
        for b in self.omega:
            labels = [b.label(r, c) for r, c in b.element_index()]
            named = [lab for lab in labels if lab in chosen]
            if not named or b.fixed:
                blocks.append(b)
            elif b.diagonal:
                blocks.extend(OmegaBlock([eta], [b.init[i, i]], True, labels[i] in chosen)
                              for i, eta in enumerate(b.names))
            elif len(named) == len(labels):
                blocks.append(OmegaBlock(b.names, b.init, b.diagonal, True))
            else:
                raise ModelError(f"{named[0]} belongs to the Ω block ({', '.join(b.names)}), and Ω is fixed by "
                                 f"whole blocks (as NONMEM's $OMEGA BLOCK FIX): name all of {', '.join(labels)}, "
                                 f"or give that η its own block")
        sigma = [Sigma(s.name, s.init, s.fixed or f"SIGMA({s.name})" in chosen) for s in self.sigma]
        return ParameterSet(theta, blocks, sigma)

    def full_natural(self, phi: torch.Tensor) -> dict[str, float]:
        """All parameters (estimated from ``phi``, fixed at their values) by name."""
        phi = phi.detach().cpu().double().numpy()
        values, k = {}, 0
        for value, e in zip(self._all_initial(), self._entries):
            if e[4]:
                values[e[3]] = value
            else:
                values[e[3]] = float(phi[k])
                k += 1
        return values

    def unpack(self, phi: torch.Tensor) -> PopulationValues:
        """θ, Ω and σ from φ (``[P]`` or ``[..., P]``); differentiable."""
        batch_shape = phi.shape[:-1]
        dtype, device = phi.dtype, phi.device
        theta: dict[str, torch.Tensor] = {}
        sigma: dict[str, torch.Tensor] = {}
        block_vals: list[dict] = [dict() for _ in self.omega]
        k = 0
        for value, (kind, i, rc, _, fixed) in zip(self._all_initial(), self._entries):
            v = torch.full(batch_shape, value, dtype=dtype, device=device) if fixed else phi[..., k]
            if not fixed:
                k += 1
            if kind == "theta":
                theta[self.theta[i].name] = v
            elif kind == "omega":
                block_vals[i][rc] = v
            else:
                sigma[self.sigma[i].name] = v
        K = self.n_eta
        omega = torch.zeros(batch_shape + (K, K), dtype=dtype, device=device)
        for bi, b in enumerate(self.omega):
            o = self._offsets[bi]
            for (r, c), v in block_vals[bi].items():
                omega[..., o + r, o + c] = v
                if r != c:
                    omega[..., o + c, o + r] = v
        return PopulationValues(theta=theta, omega=omega, sigma=sigma)

    # --------------------------------------------------------- transformations
    def to_unconstrained(self, phi: torch.Tensor) -> torch.Tensor:
        """x from φ (``[P]``)."""
        out = []
        estimated = [e for e in self._entries if not e[4]]
        omega_done = set()
        pos = {e[3]: j for j, e in enumerate(estimated)}
        for kind, i, rc, name, _ in estimated:
            if kind == "theta":
                out.append(self._theta_forward(self.theta[i], phi[pos[name]]))
            elif kind == "sigma":
                out.append(torch.log(phi[pos[name]]))
            elif i not in omega_done:
                omega_done.add(i)
                b = self.omega[i]
                m = self._block_from_phi(b, phi, pos)
                if b.diagonal:
                    out.extend(torch.log(torch.diagonal(m)).unbind())
                else:
                    try:
                        chol = torch.linalg.cholesky(m)
                    except RuntimeError:
                        raise ModelError(f"omega block {b.names} is not positive definite") from None
                    for (r, c) in b.element_index():
                        out.append(torch.log(chol[r, c]) if r == c else chol[r, c])
        return torch.stack(out) if out else phi.new_zeros(0)

    def from_unconstrained(self, x: torch.Tensor) -> torch.Tensor:
        """φ from x (``[P]``); differentiable."""
        out = []
        estimated = [e for e in self._entries if not e[4]]
        j = 0
        while j < len(estimated):
            kind, i, rc, name, _ = estimated[j]
            if kind == "theta":
                out.append(self._theta_backward(self.theta[i], x[j]))
                j += 1
            elif kind == "sigma":
                out.append(torch.exp(x[j]))
                j += 1
            else:
                b = self.omega[i]
                n = b.n_estimated
                xs = x[j:j + n]
                if b.diagonal:
                    out.extend(torch.exp(xs).unbind())
                else:
                    chol = x.new_zeros(b.size, b.size)
                    rows, cols = zip(*b.element_index())
                    diag = torch.tensor([r == c for r, c in b.element_index()], device=x.device)
                    chol = chol.index_put((torch.tensor(rows), torch.tensor(cols)),
                                          torch.where(diag, torch.exp(xs), xs))
                    m = chol @ chol.T
                    out.extend(m[r, c] for r, c in b.element_index())
                j += n
        return torch.stack(out) if out else x.new_zeros(0)

    def _block_from_phi(self, b: OmegaBlock, phi: torch.Tensor, pos: dict) -> torch.Tensor:
        m = phi.new_zeros(b.size, b.size)
        for r in range(b.size):
            for c in range(r + 1):
                key = b.label(r, c)
                if key in pos:
                    m[r, c] = phi[pos[key]]
                    m[c, r] = phi[pos[key]]
        return m

    @staticmethod
    def _theta_forward(t: Theta, v: torch.Tensor) -> torch.Tensor:
        lo, hi = t.lower, t.upper
        if math.isfinite(lo) and math.isfinite(hi):
            u = ((v - lo) / (hi - lo)).clamp(_LOG_FLOOR, 1 - 1e-16)
            return torch.log(u) - torch.log1p(-u)
        if math.isfinite(lo):
            return torch.log((v - lo).clamp_min(_LOG_FLOOR))
        if math.isfinite(hi):
            return torch.log((hi - v).clamp_min(_LOG_FLOOR))
        return v

    @staticmethod
    def _theta_backward(t: Theta, x: torch.Tensor) -> torch.Tensor:
        lo, hi = t.lower, t.upper
        if math.isfinite(lo) and math.isfinite(hi):
            return lo + (hi - lo) * torch.sigmoid(x)
        if math.isfinite(lo):
            return lo + torch.exp(x)
        if math.isfinite(hi):
            return hi - torch.exp(x)
        return x

    def near_bounds(self, phi: torch.Tensor, rel: float = 1e-3) -> list[str]:
        """Names of θ estimates near a finite bound, and Ω variances near 0 (below 1e-5).

        A θ is near its bound ``b`` when ``|θ − b| <= rel · max(|b|, min(1, |init − b|))``: within
        ``rel`` of the bound relative to the bound's size, or (bounds at or near 0) to the initial
        estimate's distance from it capped at 1. A small initial distance keeps a parameter on a
        small scale from being flagged for being small; the cap keeps a large initial value from
        flagging an estimate far from its bound.

        Examples
        --------
        >>> ps = ParameterSet([Theta("V", 1000.0, lower=0.0)], [], [Sigma("ADD", 1.0)])
        >>> ps.near_bounds(torch.tensor([0.5, 1.0])), ps.near_bounds(torch.tensor([5e-4, 1.0]))
        ([], ['V'])
        """
        vals = self.full_natural(phi)
        near = []
        for t in self.theta:
            if t.fixed:
                continue
            v = vals[t.name]
            for bound in (t.lower, t.upper):
                if math.isfinite(bound) and abs(v - bound) <= rel * max(abs(bound), min(1.0, abs(t.init - bound))):
                    near.append(t.name)
        for b in self.omega:
            if b.fixed:
                continue
            for r in range(b.size):
                if vals[f"OMEGA({b.names[r]})"] < 1e-5:
                    near.append(f"OMEGA({b.names[r]})")
        return near

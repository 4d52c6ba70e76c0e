"""The plain multilayer perceptron shared by the GAN, BSDE and VAE generators."""
from __future__ import annotations

from typing import Callable

from torch import nn


def mlp(n_in: int, hidden: int, layers: int, n_out: int,
        activation: Callable[[], nn.Module] = nn.SiLU) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` (each Linear + ``activation()``), then a Linear to ``n_out``.

    Examples
    --------
    >>> net = mlp(3, 8, 2, 1)
    >>> [type(m).__name__ for m in net]
    ['Linear', 'SiLU', 'Linear', 'SiLU', 'Linear']
    """
    blocks: list[nn.Module] = []
    width = n_in
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), activation()]
        width = hidden
    blocks.append(nn.Linear(width, n_out))
    return nn.Sequential(*blocks)

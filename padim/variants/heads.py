"""Deep-SVDD heads: several small per-patch MLPs evaluated as one batched module.

Each head is the network of Ruff et al. (ICML 2018) scaled to patch embeddings:
``d -> 4f -> 2f -> rep_dim``, no bias terms and BatchNorm without affine
parameters, because a bias (or a BN shift) lets the network reach the trivial
solution phi(x) = c for every input ("hypersphere collapse"). The heads are
independent networks (own weights, own centre, own radius); stacking their
weights into (K, in, out) tensors lets one einsum evaluate all of them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Objective = Literal["one-class", "soft-boundary"]

# Ruff et al. move centre coordinates closer to zero than this away from it: a
# coordinate at 0 can be matched by zero weights, a cheap route to collapse.
CENTRE_MIN_ABS = 0.1
# BatchNorm epsilon used by Ruff et al.'s networks (torch's default is 1e-5).
BN_EPS = 1e-4
LEAKY_SLOPE = 0.01


class SVDDHeads(nn.Module):
    """K bias-free MLP heads ``in_dim -> 4f -> 2f -> rep_dim`` evaluated together.

    Buffers ``centres`` (K, rep_dim) and ``radii`` (K,) are part of the state so
    that a saved model scores exactly as it did; ``centred`` records whether the
    centres were fixed yet (they are set once, from the first batch seen).
    """

    def __init__(
        self,
        in_dim: int,
        num_heads: int = 3,
        f: int = 16,
        rep_dim: int = 32,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if in_dim < 1 or num_heads < 1 or f < 1 or rep_dim < 1:
            raise ValueError("in_dim, num_heads, f and rep_dim must be positive")
        self.in_dim, self.num_heads, self.f, self.rep_dim = in_dim, num_heads, f, rep_dim
        dims = [in_dim, 4 * f, 2 * f, rep_dim]
        self.weights = nn.ParameterList(
            nn.Parameter(_kaiming_uniform(num_heads, d_in, d_out, generator)) for d_in, d_out in zip(dims, dims[1:])
        )
        # One BatchNorm over K*width channels is exactly K independent BatchNorms,
        # one per head, without a Python loop over heads.
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(num_heads * width, eps=BN_EPS, affine=False) for width in dims[1:-1]
        )
        self.register_buffer("centres", torch.zeros(num_heads, rep_dim))
        self.register_buffer("radii", torch.zeros(num_heads))
        self.register_buffer("centred", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map patches (N, in_dim) to representations (N, K, rep_dim)."""
        n = x.shape[0]
        h = torch.einsum("nd,kde->nke", x, self.weights[0])  # (N, K, 4f)
        for weight, norm in zip(self.weights[1:], self.norms):
            h = norm(h.reshape(n, -1)).reshape(n, self.num_heads, -1)
            h = F.leaky_relu(h, LEAKY_SLOPE)
            h = torch.einsum("nkd,kde->nke", h, weight)  # (N, K, next width)
        return h

    def squared_distances(self, x: torch.Tensor) -> torch.Tensor:
        """||phi_k(x) - c_k||^2 for every patch and head: (N, in_dim) -> (N, K)."""
        return (self(x) - self.centres).pow(2).sum(dim=-1)

    @torch.no_grad()
    def set_centres(self, x: torch.Tensor) -> None:
        """Fix each head's centre to the mean representation of ``x`` (N, in_dim).

        Uses batch statistics (train-mode BatchNorm) because those are what the
        training loss sees; the running BN statistics of an untrained network
        describe nothing yet.
        """
        was_training = self.training
        self.train()
        # Do not let this forward pass move the running statistics: the first
        # training step will see the same batch and account for it.
        saved = [(norm.running_mean.clone(), norm.running_var.clone(), norm.num_batches_tracked.clone())
                 for norm in self.norms]
        centres = self(x).mean(dim=0)  # (K, rep_dim)
        for norm, (mean, var, tracked) in zip(self.norms, saved):
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.num_batches_tracked.copy_(tracked)
        self.train(was_training)
        small = centres.abs() < CENTRE_MIN_ABS
        centres = torch.where(small & (centres < 0), -CENTRE_MIN_ABS, centres)
        centres = torch.where(small & (centres >= 0), CENTRE_MIN_ABS, centres)
        self.centres.copy_(centres)
        self.centred.fill_(True)

    def loss(self, x: torch.Tensor, objective: Objective, nu: float) -> torch.Tensor:
        """Deep-SVDD loss of a batch (N, in_dim), summed over heads.

        one-class: mean ||phi(x) - c||^2.
        soft-boundary: R^2 + 1/nu * mean(max(0, ||phi(x) - c||^2 - R^2)), R fixed
        during the gradient step and re-estimated by :meth:`update_radii`.
        """
        dist = self.squared_distances(x)  # (N, K)
        if objective == "one-class":
            return dist.mean(dim=0).sum()
        r2 = self.radii.pow(2)
        return (r2 + F.relu(dist - r2).mean(dim=0) / nu).sum()

    @torch.no_grad()
    def update_radii(self, x: torch.Tensor, nu: float) -> None:
        """Set R_k to the (1 - nu) quantile of head k's distances on ``x``.

        Ruff et al.'s line search for R: then a fraction nu of training patches
        lies outside the sphere, which is what the soft-boundary loss allows.
        """
        dist = self.squared_distances(x).sqrt()  # (N, K)
        self.radii.copy_(torch.quantile(dist, 1.0 - nu, dim=0))

    @torch.no_grad()
    def scores(self, x: torch.Tensor, objective: Objective) -> torch.Tensor:
        """Anomaly score per patch (N,): distance to the nearest head's centre.

        With the soft-boundary objective each head's distance is measured from
        its sphere's surface (||phi - c|| - R), so heads with different radii
        compare fairly and a score above 0 means "outside every sphere".
        """
        dist = self.squared_distances(x).clamp_min(0).sqrt()  # (N, K)
        if objective == "soft-boundary":
            dist = dist - self.radii
        return dist.min(dim=1).values


def _kaiming_uniform(
    num_heads: int, d_in: int, d_out: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Weights (K, d_in, d_out) initialised as torch's nn.Linear does (per head)."""
    # nn.Linear: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(d_in)
    return torch.empty(num_heads, d_in, d_out).uniform_(-bound, bound, generator=generator)

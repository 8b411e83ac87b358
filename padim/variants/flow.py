"""RealNVP normalizing flow over patch embeddings (Dinh et al., ICLR 2017).

Maps an embedding x (d,) to z = f(x) with f invertible and log|det df/dx|
tractable, trained so that z ~ N(0, I). The negative log-likelihood
-log p(x) = 0.5 ||z||^2 + d/2 log(2 pi) - log|det df/dx| is the anomaly score.

A block is ActNorm -> affine coupling -> fixed permutation:
- ActNorm (Kingma & Dhariwal, Glow) standardises each channel from the first
  batch it sees; backbone channels differ in scale by orders of magnitude and
  an unnormalised flow would spend its first steps (and its stability) on that.
- The coupling keeps one half of the channels and scales/shifts the other half
  with s, t = MLP(kept half). The log-scale is s = scale * tanh(raw): bounded,
  so exp(s) can neither overflow nor vanish however large the MLP output.
  Its last layer starts at zero, so every block starts as the identity.
- Which half is kept alternates between blocks, and a seeded permutation
  between blocks mixes channels across the halves.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)
# Channels that are (nearly) constant in the first batch would otherwise get an
# ActNorm gain of 1/std, i.e. near-infinite, and dominate every score.
ACTNORM_MIN_STD = 1e-3


class ActNorm(nn.Module):
    """Per-channel affine y = (x + loc) * exp(log_scale), data-initialised once."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set loc/scale so that ``x`` (N, dim) comes out zero-mean, unit-variance."""
        std = x.std(dim=0).clamp_min(ACTNORM_MIN_STD)
        self.loc.copy_(-x.mean(dim=0))
        self.log_scale.copy_(-std.log())
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, dim) -> (y (N, dim), log|det| (N,))."""
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y = (x + self.loc) * self.log_scale.exp()
        return y, self.log_scale.sum().expand(x.shape[0])


class AffineCoupling(nn.Module):
    """y_keep = x_keep; y_other = x_other * exp(s) + t with (s, t) = MLP(x_keep)."""

    def __init__(self, dim: int, hidden: int, keep_first: bool) -> None:
        super().__init__()
        half = dim // 2
        # With an odd dim the two halves differ by one channel; both are covered
        # because the kept half alternates between blocks.
        self.num_keep = half if keep_first else dim - half
        self.keep_first = keep_first
        num_other = dim - self.num_keep
        self.net = nn.Sequential(
            nn.Linear(self.num_keep, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2 * num_other),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.scale = nn.Parameter(torch.ones(num_other))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, dim) -> (y (N, dim), log|det| (N,))."""
        if self.keep_first:
            keep, other = x[:, : self.num_keep], x[:, self.num_keep :]
        else:
            other, keep = x[:, : -self.num_keep], x[:, -self.num_keep :]
        raw_s, t = self.net(keep).chunk(2, dim=1)
        s = self.scale * torch.tanh(raw_s)  # (N, num_other), bounded log-scale
        other = other * s.exp() + t
        y = torch.cat([keep, other] if self.keep_first else [other, keep], dim=1)
        return y, s.sum(dim=1)


class RealNVP(nn.Module):
    """``num_blocks`` x (ActNorm, AffineCoupling, permutation) over (N, dim)."""

    def __init__(
        self,
        dim: int,
        num_blocks: int = 7,
        hidden: int = 130,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"a coupling flow needs dim >= 2, got {dim}")
        if num_blocks < 1 or hidden < 1:
            raise ValueError("num_blocks and hidden must be positive")
        self.dim = dim
        self.norms = nn.ModuleList(ActNorm(dim) for _ in range(num_blocks))
        self.couplings = nn.ModuleList(
            AffineCoupling(dim, hidden, keep_first=i % 2 == 0) for i in range(num_blocks)
        )
        # Buffers, not recomputed from a seed at load time: the file is the truth.
        perms = torch.stack([torch.randperm(dim, generator=generator) for _ in range(num_blocks)])
        self.register_buffer("permutations", perms)  # (num_blocks, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, dim) -> (z (N, dim), log|det dz/dx| (N,))."""
        logdet = x.new_zeros(x.shape[0])
        for norm, coupling, perm in zip(self.norms, self.couplings, self.permutations):
            x, ld_norm = norm(x)
            x, ld_coupling = coupling(x)
            x = x[:, perm]  # a permutation has |det| = 1
            logdet = logdet + ld_norm + ld_coupling
        return x, logdet

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood in nats per patch: (N, dim) -> (N,)."""
        z, logdet = self(x)
        return 0.5 * (z.pow(2).sum(dim=1) + self.dim * LOG_2PI) - logdet

"""Per-position streaming Gaussian statistics: the whole learned state of PaDiM.

For P patch positions and d-dimensional embeddings the state is

* ``count``: images seen (a float, because exponential forgetting weights them),
* ``mean``: (P, d) float64,
* ``scatter``: (P, d, d) float32, sum (x - mean)(x - mean)^T.

It never grows with the number of images. Updates fold a batch in with the
parallel (Chan et al.) formula on *centred* data, so a large common offset in the
features cannot cancel the variance away the way raw sums of x and x x^T do
(the seed implementation's float32 one-pass sums lose the covariance once the
mean is ~1000x the spread). Two states merge exactly with the same formula.

Why float32 for the scatter: the batch's centred scatter and the merge's
cross-term are folded in with a single in-place ``baddbmm`` (the batch matrix is
augmented with one column ``sqrt(n_a n_b / n) * delta``), which reads and writes
the state once per batch. A float64 or packed-triangle state needs two to three
times the memory traffic and made learning slower than the backbone itself. With
centred updates float32 keeps Mahalanobis distances within ~1e-5 (relative) of a
float64 batch computation even for features whose mean is 100x their spread and
covariances with condition numbers near 2e4 (tests/padim/test_stats.py). The
mean stays float64: it absorbs the large offsets. On disk the scatter is stored
as its upper triangle.

Scoring uses the Cholesky factor of ``Sigma = scatter / (count - 1) + epsilon * I``:
it is computed lazily, in position chunks to bound peak memory, only after the
statistics changed, and kept as the float32 inverse factor so a batch of distances
is one batched matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from padim.errors import ConfigurationError, InputError, NotFittedError

DEFAULT_EPSILON = 0.01
# Positions per chunk when forming covariances and their factors: bounds the
# transient float64 (chunk, d, d) buffers to a few tens of MB for d = 550.
_FACTOR_CHUNK = 256


@dataclass
class _Precision:
    """What scoring keeps: float32 mean and inverse Cholesky factor per position."""

    version: int
    epsilon: float
    mean: torch.Tensor  # (P, d) float32
    inv_chol: torch.Tensor  # (P, d, d) float32, lower triangular: L^-1 with Sigma = L L^T


class GaussianStats:
    """Streaming per-position mean and scatter of embeddings, exact and mergeable."""

    def __init__(self, num_positions: int, dim: int, device: torch.device | str = "cpu") -> None:
        if num_positions < 1 or dim < 1:
            raise ConfigurationError(f"need at least one position and one dimension, got {num_positions}, {dim}")
        self.num_positions = num_positions
        self.dim = dim
        self.device = torch.device(device)
        self.count = 0.0
        self.mean = torch.zeros(num_positions, dim, dtype=torch.float64, device=self.device)
        self.scatter = torch.zeros(num_positions, dim, dim, dtype=torch.float32, device=self.device)
        rows, cols = torch.triu_indices(dim, dim, device=self.device)
        self._rows, self._cols = rows, cols
        self._version = 0
        self._precision: _Precision | None = None

    # ------------------------------------------------------------------ learning

    def _check_samples(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[1:] != (self.num_positions, self.dim):
            raise InputError(
                f"expected samples of shape (N, {self.num_positions}, {self.dim}), got {tuple(x.shape)}"
            )

    def update(self, x: torch.Tensor) -> None:
        """Fold in samples ``x`` of shape (N, P, d): N samples for each of the P positions."""
        self._check_samples(x)
        n_b = x.shape[0]
        if n_b == 0:
            return
        x = x.to(device=self.device, dtype=torch.float32).contiguous()  # BLAS fast path, see mahalanobis
        mean_b = x.to(torch.float64).mean(dim=0)  # (P, d)
        # Centring in float32 is exact enough: x itself is float32.
        centred = (x - mean_b.to(torch.float32)).permute(1, 2, 0)  # (P, d, N)
        self._merge_moments(float(n_b), mean_b, centred=centred)

    def merge(self, other: GaussianStats) -> None:
        """Add another state's samples to this one, exactly as if they had been streamed here."""
        if (other.num_positions, other.dim) != (self.num_positions, self.dim):
            raise ConfigurationError(
                f"cannot merge statistics of shape {(other.num_positions, other.dim)} "
                f"into {(self.num_positions, self.dim)}"
            )
        if other.count == 0:
            return
        self._merge_moments(other.count, other.mean.to(self.device), scatter=other.scatter.to(self.device))

    def _merge_moments(
        self, n_b: float, mean_b: torch.Tensor,
        centred: torch.Tensor | None = None, scatter: torch.Tensor | None = None,
    ) -> None:
        """Chan's parallel update with samples (``centred``, (P, d, N)) or a finished ``scatter``."""
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean  # (P, d) float64
        weighted = (delta * (n_a * n_b / n) ** 0.5).to(torch.float32).unsqueeze(2)  # (P, d, 1)
        if centred is not None:
            # One pass over the state: scatter += [c, w] [c, w]^T = c c^T + (n_a n_b / n) delta delta^T.
            augmented = torch.cat([centred, weighted], dim=2)
            self.scatter.baddbmm_(augmented, augmented.transpose(1, 2))
        else:
            assert scatter is not None
            self.scatter += scatter
            self.scatter.baddbmm_(weighted, weighted.transpose(1, 2))
        self.mean += delta * (n_b / n)
        self.count = n
        self._changed()

    def decay(self, factor: float) -> None:
        """Down-weight everything learned so far by ``factor`` in (0, 1] (exponential forgetting)."""
        if not 0.0 < factor <= 1.0:
            raise ConfigurationError(f"decay factor must be in (0, 1], got {factor}")
        if factor == 1.0 or self.count == 0:
            return
        self.count *= factor
        self.scatter *= factor
        self._changed()

    def reset(self) -> None:
        """Forget everything."""
        self.count = 0.0
        self.mean.zero_()
        self.scatter.zero_()
        self._changed()

    def _changed(self) -> None:
        self._version += 1
        self._precision = None

    # ------------------------------------------------------------------ estimates

    def _require_fitted(self) -> None:
        if self.count <= 1.0:
            raise NotFittedError(
                f"the covariance needs more than one image, this model has learned {self.count:g}"
            )

    def _covariance_rows(self, start: int, stop: int, epsilon: float) -> torch.Tensor:
        """Regularised covariance of positions [start, stop) as float64 (k, d, d)."""
        block = self.scatter[start:stop].to(torch.float64)
        # Symmetrise: batched products need not round (i, j) and (j, i) identically.
        cov = (block + block.transpose(1, 2)) * (0.5 / (self.count - 1.0))
        cov.diagonal(dim1=1, dim2=2).add_(epsilon)
        return cov

    def covariance(self, epsilon: float = DEFAULT_EPSILON) -> torch.Tensor:
        """Sample covariance (divided by count - 1) plus ``epsilon * I``: float64 (P, d, d)."""
        self._require_fitted()
        return self._covariance_rows(0, self.num_positions, epsilon)

    def precision(self, epsilon: float = DEFAULT_EPSILON) -> _Precision:
        """The scoring cache, recomputed only when the statistics or epsilon changed."""
        self._require_fitted()
        cached = self._precision
        if cached is not None and cached.version == self._version and cached.epsilon == epsilon:
            return cached
        self._precision = None  # release the old cache before building the new one
        inv_chol = torch.empty(self.num_positions, self.dim, self.dim, dtype=torch.float32, device=self.device)
        eye = torch.eye(self.dim, dtype=torch.float64, device=self.device)
        for start in range(0, self.num_positions, _FACTOR_CHUNK):
            stop = min(start + _FACTOR_CHUNK, self.num_positions)
            chol, info = torch.linalg.cholesky_ex(self._covariance_rows(start, stop, epsilon))
            if bool(torch.any(info != 0)):
                bad = int(torch.nonzero(info)[0]) + start
                raise NotFittedError(
                    f"covariance at patch position {bad} is not positive definite "
                    f"(epsilon={epsilon}); use a larger epsilon"
                )
            inv = torch.linalg.solve_triangular(chol, eye.expand(stop - start, -1, -1), upper=False)
            inv_chol[start:stop] = inv.to(torch.float32)
        self._precision = _Precision(self._version, epsilon, self.mean.to(torch.float32), inv_chol)
        return self._precision

    def mahalanobis(self, x: torch.Tensor, epsilon: float = DEFAULT_EPSILON) -> torch.Tensor:
        """Distances of samples ``x`` (N, P, d) to each position's Gaussian: float32 (N, P)."""
        self._check_samples(x)
        prec = self.precision(epsilon)
        # Centring in float32 loses nothing: x is float32, so its own rounding (not the
        # mean's, which is as large) bounds the error of x - mean.
        # Contiguous (N, P, d) matters: embeddings arrive as a (B, d, h, w) view, and a
        # bmm over that transposed layout falls off BLAS's fast path (measured 50x slower).
        diff = x.to(device=self.device, dtype=torch.float32).contiguous() - prec.mean  # (N, P, d)
        z = torch.bmm(prec.inv_chol, diff.permute(1, 2, 0))  # (P, d, N)
        return z.square().sum(dim=1).sqrt().transpose(0, 1)  # (N, P)

    # ------------------------------------------------------------------ accounting and persistence

    @property
    def version(self) -> int:
        """Increments whenever the statistics change (cheap staleness check for callers)."""
        return self._version

    def state_bytes(self) -> int:
        """Bytes of the learned statistics (what must be saved to resume)."""
        return self.mean.element_size() * self.mean.nelement() + self.scatter.element_size() * self.scatter.nelement()

    def cache_bytes(self) -> int:
        """Bytes of the scoring cache currently held (0 until the first score)."""
        if self._precision is None:
            return 0
        p = self._precision
        return p.mean.element_size() * p.mean.nelement() + p.inv_chol.element_size() * p.inv_chol.nelement()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that fully describe the statistics (CPU, contiguous)."""
        return {
            "count": torch.tensor([self.count], dtype=torch.float64),
            "mean": self.mean.detach().cpu().contiguous(),
            # The upper triangle is all there is to know of a symmetric matrix: half the bytes.
            "scatter": self.scatter[:, self._rows, self._cols].detach().cpu().contiguous(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict` output, checking every shape."""
        expected = {
            "count": (1,),
            "mean": (self.num_positions, self.dim),
            "scatter": (self.num_positions, self.dim * (self.dim + 1) // 2),
        }
        for key, shape in expected.items():
            if key not in state:
                raise InputError(f"statistics are missing {key!r}")
            if tuple(state[key].shape) != shape:
                raise InputError(f"statistics {key!r} has shape {tuple(state[key].shape)}, expected {shape}")
        count = float(state["count"][0])
        if not count >= 0.0:
            raise InputError(f"statistics count must be >= 0, got {count}")
        self.count = count
        packed = state["scatter"].to(device=self.device, dtype=torch.float32)
        if not bool(torch.isfinite(packed).all()) or not bool(torch.isfinite(state["mean"]).all()):
            raise InputError("statistics contain NaN or infinite values")
        self.mean.copy_(state["mean"].to(torch.float64))
        self.scatter[:, self._rows, self._cols] = packed
        self.scatter[:, self._cols, self._rows] = packed
        self._changed()

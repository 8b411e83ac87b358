"""PaDiMShared: one Gaussian for every patch position.

PaDiM fits a Gaussian per position; this variant pools every patch of every
image into a single N(mu, Sigma). The state shrinks by the number of
positions (3136 at 224 px: 127 MB -> 40 KB for d = 100) and the model becomes
position-invariant: a texture that is normal anywhere is normal everywhere,
so it suits textures, moving or re-aimed cameras and small training sets, and
misses "right object, wrong place" anomalies that per-position PaDiM catches.

It is PaDiM with a one-position :class:`~padim.stats.GaussianStats` fed every
patch as a sample, so it keeps PaDiM's properties: exact streaming
statistics, mergeable, optional exponential forgetting, same file layout.
"""

from __future__ import annotations

import torch

from padim.model import PaDiM


class PaDiMShared(PaDiM):
    """PaDiM with a single Gaussian shared by all patch positions.

    Arguments are PaDiM's. ``half_life`` counts images, as in PaDiM (every image
    contributes all its patches, so forgetting weighs whole images).
    :attr:`num_trained` is the (weighted) number of images. One image already
    gives h*w samples, so a model is fitted after its first image (PaDiM needs
    two: its per-position covariances need two samples per position).
    """

    variant = "shared"

    def _stats_positions(self) -> int:
        """One Gaussian for every position together."""
        return 1

    def train_embeddings(self, embeddings: torch.Tensor) -> None:
        patches = self._patches(embeddings)  # (B, P, d)
        if self.half_life is not None:
            self.stats.decay(0.5 ** (patches.shape[0] / self.half_life))
        self.stats.update(patches.reshape(-1, 1, self.num_embeddings))  # (B*P, 1, d)

    def predict_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        patches = self._patches(embeddings)  # (B, P, d)
        distances = self.stats.mahalanobis(patches.reshape(-1, 1, self.num_embeddings), self.epsilon)
        return distances.reshape(-1, *self.grid)  # (B*P, 1) -> (B, h, w)

    @property
    def num_trained(self) -> float:
        # The statistics count patches; every image brings exactly P of them
        # and decay weighs all equally, so the image count is exact.
        return self.stats.count / self.extractor.num_positions

"""The seed's PaDiM variants, with PaDiM's surface (see docs/variants.md).

- :class:`PaDiMShared`: one Gaussian for every patch position (exact, mergeable).
- :class:`PaDiMSVDD`: Deep-SVDD heads on patch embeddings (trained online).
- :class:`PaDiMNVP`: a RealNVP normalizing flow on patch embeddings (trained online).

Importing this package registers the variants with :func:`padim.load_model`.
"""

from padim.errors import TrainingDivergedError
from padim.variants._gradient import GradientPatchModel
from padim.variants.nvp import PaDiMNVP
from padim.variants.shared import PaDiMShared
from padim.variants.svdd import PaDiMSVDD

__all__ = ["GradientPatchModel", "PaDiMNVP", "PaDiMSVDD", "PaDiMShared", "TrainingDivergedError"]

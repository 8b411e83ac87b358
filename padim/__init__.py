"""padim: PaDiM anomaly detection and localisation with constant memory.

The public API is what ``__all__`` lists; everything else is private.
"""

from __future__ import annotations

__version__ = "0.1.0"

from padim.backbones import BACKBONES
from padim.base import PatchModel, load_model
from padim.errors import (
    ConfigurationError,
    IncompatibleModelError,
    InputError,
    NotFittedError,
    PadimError,
    PersistError,
    TrainingDivergedError,
    WeightsError,
)
from padim.features import FeatureExtractor
from padim.images import image_to_tensor, images_to_tensor, load_image, load_images
from padim.model import PaDiM
from padim.postprocess import anomaly_maps, image_scores
from padim.stats import GaussianStats
from padim.variants import PaDiMNVP, PaDiMShared, PaDiMSVDD

__all__ = [
    "BACKBONES",
    "ConfigurationError",
    "FeatureExtractor",
    "GaussianStats",
    "IncompatibleModelError",
    "InputError",
    "NotFittedError",
    "PaDiM",
    "PaDiMNVP",
    "PaDiMSVDD",
    "PaDiMShared",
    "PadimError",
    "PatchModel",
    "PersistError",
    "TrainingDivergedError",
    "WeightsError",
    "__version__",
    "anomaly_maps",
    "image_scores",
    "image_to_tensor",
    "images_to_tensor",
    "load_image",
    "load_images",
    "load_model",
]

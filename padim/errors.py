"""Exceptions raised by the padim library.

Every error the library raises on purpose derives from :class:`PadimError`, so a
caller can catch the whole family at its edge::

    PadimError
    ├── ConfigurationError      invalid constructor arguments (also a ValueError)
    ├── InputError              images of the wrong shape, size, dtype or range (also a ValueError)
    ├── WeightsError            backbone weights missing, mismatched or untrustworthy
    ├── NotFittedError          scoring before at least two images were learned
    ├── TrainingDivergedError   a gradient-trained variant met a non-finite loss (also a FloatingPointError)
    └── PersistError            a model file that is unreadable, corrupt or not ours
        └── IncompatibleModelError   a valid file for another configuration
"""

from __future__ import annotations


class PadimError(Exception):
    """Root of every error the padim library raises deliberately."""


class ConfigurationError(PadimError, ValueError):
    """A constructor argument is invalid (unknown backbone, bad size, ...)."""


class InputError(PadimError, ValueError):
    """Images passed to a model are not what it expects; nothing was learned or scored."""


class WeightsError(PadimError):
    """Backbone weights could not be found, or do not fit the architecture."""


class NotFittedError(PadimError):
    """The model has not learned enough images to estimate its distribution."""


class TrainingDivergedError(PadimError, FloatingPointError):
    """Gradient training (PaDiMSVDD, PaDiMNVP) met a non-finite loss; that step was not taken."""


class PersistError(PadimError):
    """A saved model could not be read: missing, truncated, corrupt or not a padim file."""


class IncompatibleModelError(PersistError):
    """A valid padim file whose configuration differs from what the caller requires."""

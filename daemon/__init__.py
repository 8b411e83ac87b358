"""padimd: the Kafka service around the ``padim`` library.

The modules are small and each has one job (see docs/daemon-design.md); import them
directly, e.g. ``from daemon.engine import Engine``. Importing this package is cheap: it
does not import torch, Kafka or the library.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("padimd")
except PackageNotFoundError:  # running from a source checkout that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

"""Small generated image files for the CLI tests (tests/daemon/test_cli.py, test_offline.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Small and non-square: the CLI tests use `--size 64`, so every image is resized, and a
# heatmap of the input's size is distinguishable from one of the model's size.
IMAGE_WH = (80, 48)
# Options that keep a fit cheap on a shared 2-core machine: random weights (no 19 MB
# checkpoint to read) and the smallest input the backbone accepts comfortably.
FAST_FIT_ARGS = ("--weights", "none", "--size", "64")


def write_images(directory: Path, count: int, *, seed: int = 0, suffix: str = ".png",
                 size_wh: tuple[int, int] = IMAGE_WH, prefix: str = "img") -> list[Path]:
    """Write `count` noisy grey-ish RGB images (a stand-in for one camera's normal view)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        pixels = (110 + 40 * rng.random((size_wh[1], size_wh[0], 3))).astype(np.uint8)
        path = directory / f"{prefix}{index}{suffix}"
        Image.fromarray(pixels, mode="RGB").save(path)
        paths.append(path)
    return paths


def write_not_an_image(path: Path) -> Path:
    """A file with an image suffix whose content is text (a common mis-saved capture)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image\n", encoding="utf-8")
    return path

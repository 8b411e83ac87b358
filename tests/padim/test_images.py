"""Image files and PIL images into model tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from padim import InputError, image_to_tensor, load_images


def test_grayscale_and_rgba_become_rgb_in_unit_range(tmp_path: Path) -> None:
    gray = Image.fromarray(np.full((40, 40), 128, dtype=np.uint8))
    rgba = Image.fromarray(np.zeros((40, 40, 4), dtype=np.uint8))
    for image in (gray, rgba):
        tensor = image_to_tensor(image, 32)
        assert tensor.shape == (3, 32, 32)
        assert 0.0 <= float(tensor.min()) <= float(tensor.max()) <= 1.0


def test_load_images_batches_files(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 30, 3), i * 50, dtype=np.uint8)).save(path)
        paths.append(path)
    batch = load_images(paths, (32, 48))
    assert batch.shape == (3, 3, 32, 48)
    assert float(batch[2].mean()) == pytest.approx(100 / 255, abs=1e-6)


def test_unreadable_file_names_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(InputError, match="not-an-image.png"):
        load_images([bad], 32)

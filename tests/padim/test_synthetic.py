"""The synthetic texture benchmark: shapes, ranges, determinism, and honest masks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from padim import synthetic

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZE = 64  # small crops keep these tests fast; nothing here depends on the size


@pytest.fixture(scope="module")
def brick() -> np.ndarray:
    return synthetic.texture("brick")


@pytest.mark.parametrize("name", synthetic.TEXTURES)
def test_texture_is_rgb_float_in_unit_range(name: str) -> None:
    tex = synthetic.texture(name)
    assert tex.dtype == np.float32
    assert tex.ndim == 3 and tex.shape[2] == 3
    assert tex.min() >= 0.0 and tex.max() <= 1.0
    assert tex.std() > 0.05  # a photograph, not a constant


def test_texture_is_read_only(brick: np.ndarray) -> None:
    # The array is cached and shared between calls; an in-place edit would leak.
    with pytest.raises(ValueError):
        brick[0, 0, 0] = 0.5


def test_unknown_texture_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown texture"):
        synthetic.texture("marble")


def test_normal_crops_shape_dtype_and_range() -> None:
    crops = synthetic.normal_crops("grass", 5, SIZE, seed=3)
    assert crops.shape == (5, 3, SIZE, SIZE)
    assert crops.dtype == torch.float32
    assert crops.min() >= 0.0 and crops.max() <= 1.0


def test_normal_crops_are_deterministic_for_a_seed() -> None:
    first = synthetic.normal_crops("gravel", 4, SIZE, seed=11)
    again = synthetic.normal_crops("gravel", 4, SIZE, seed=11)
    assert torch.equal(first, again)


def test_normal_crops_differ_between_seeds() -> None:
    first = synthetic.normal_crops("gravel", 4, SIZE, seed=11)
    other = synthetic.normal_crops("gravel", 4, SIZE, seed=12)
    assert not torch.equal(first, other)


def _crop_columns(tex: np.ndarray, crop: torch.Tensor) -> set[int]:
    """Columns of ``tex`` at which ``crop``'s first row occurs exactly."""
    row = crop[0, 0].numpy()
    windows = np.lib.stride_tricks.sliding_window_view(tex[..., 0], row.shape[0], axis=1)
    _, cols = np.nonzero((windows == row).all(axis=2))  # windows: (H, W - S + 1, S)
    return {int(c) for c in cols}


@pytest.mark.parametrize(("region", "left_half"), [("train", True), ("test", False)])
def test_region_crops_stay_in_their_half(brick: np.ndarray, region: str, left_half: bool) -> None:
    half = brick.shape[1] // 2
    for crop in synthetic.normal_crops("brick", 3, SIZE, seed=5, region=region):
        cols = _crop_columns(brick, crop)
        assert cols, "crop not found in the photograph"
        if left_half:
            assert all(c + SIZE <= half for c in cols)
        else:
            assert all(c >= half for c in cols)


def test_crop_larger_than_region_is_rejected() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        synthetic.normal_crops("brick", 1, 300, seed=0, region="train")


@pytest.mark.parametrize("kind", synthetic.DEFECT_KINDS)
def test_defect_changes_only_pixels_inside_its_mask(brick: np.ndarray, kind: str) -> None:
    for seed in range(10):
        clean = synthetic.normal_crops("brick", 1, SIZE, seed=seed)[0]
        defective, mask = synthetic.add_defect(clean, kind, np.random.default_rng(seed), brick)
        outside = ~mask
        assert torch.equal(defective[:, outside], clean[:, outside])


@pytest.mark.parametrize("name", synthetic.TEXTURES)
@pytest.mark.parametrize("kind", synthetic.DEFECT_KINDS)
def test_defect_visibly_changes_its_mask(name: str, kind: str) -> None:
    # A mask over pixels that did not change would label invisible defects.
    tex = synthetic.texture(name)
    for seed in range(10):
        clean = synthetic.normal_crops(name, 1, SIZE, seed=seed)[0]
        defective, mask = synthetic.add_defect(clean, kind, np.random.default_rng(seed), tex)
        assert mask.any()
        change = (defective - clean).abs().amax(dim=0)[mask]  # (pixels in mask,)
        assert (change > 1.0 / 255.0).float().mean() >= 0.5
        assert change.mean() >= 0.04


def test_cutpaste_without_source_is_rejected() -> None:
    clean = synthetic.normal_crops("brick", 1, SIZE, seed=0)[0]
    with pytest.raises(ValueError, match="source"):
        synthetic.add_defect(clean, "cutpaste", np.random.default_rng(0))


def test_unknown_defect_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown defect kind"):
        synthetic.defective_crops("brick", 2, SIZE, seed=0, kinds=("scratch", "burn"))


def test_defective_crops_shapes_ranges_and_masks() -> None:
    images, masks, kinds = synthetic.defective_crops("grass", 6, SIZE, seed=2)
    assert images.shape == (6, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert masks.shape == (6, SIZE, SIZE) and masks.dtype == torch.bool
    assert masks.flatten(1).any(dim=1).all()
    # Defects are local: none covers more than a tenth of the image.
    assert masks.float().mean(dim=(1, 2)).max() < 0.1
    assert kinds == list(synthetic.DEFECT_KINDS) * 2


def test_defective_crops_are_deterministic_for_a_seed() -> None:
    first = synthetic.defective_crops("brick", 6, SIZE, seed=8)
    again = synthetic.defective_crops("brick", 6, SIZE, seed=8)
    assert torch.equal(first[0], again[0])
    assert torch.equal(first[1], again[1])
    assert first[2] == again[2]


def test_dataset_labels_and_masks_line_up() -> None:
    ds = synthetic.make_dataset("gravel", size=SIZE, n_train=4, n_test_normal=3, n_test_defective=5)
    assert ds.train.shape == (4, 3, SIZE, SIZE)
    assert ds.test_images.shape == (8, 3, SIZE, SIZE)
    assert ds.test_labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    masks = ds.test_masks
    assert masks.shape == (8, SIZE, SIZE)
    assert masks.flatten(1).any(dim=1).tolist() == [False] * 3 + [True] * 5
    assert len(ds.defect_kinds) == 5


def test_dataset_is_deterministic_for_a_seed() -> None:
    first = synthetic.make_dataset("brick", size=SIZE, n_train=3, n_test_normal=2, n_test_defective=3)
    again = synthetic.make_dataset("brick", size=SIZE, n_train=3, n_test_normal=2, n_test_defective=3)
    assert torch.equal(first.test_images, again.test_images)
    assert torch.equal(first.train, again.train)
    assert torch.equal(first.test_masks, again.test_masks)


def test_dataset_splits_draw_independently() -> None:
    # More test images must not move the training crops: comparisons across test-set
    # sizes then measure the same model.
    small = synthetic.make_dataset("brick", size=SIZE, n_train=3, n_test_normal=2, n_test_defective=3)
    large = synthetic.make_dataset("brick", size=SIZE, n_train=3, n_test_normal=6, n_test_defective=9)
    assert torch.equal(small.train, large.train)


def test_importing_the_module_does_not_import_scikit_image() -> None:
    # The daemon's demo producer imports this module; scikit-image is only a test/demo
    # extra, so it must load only when a texture is asked for.
    code = "import sys, padim.synthetic; print('skimage' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "False"


def test_missing_scikit_image_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    synthetic._load_texture.cache_clear()  # a cached texture would hide the import
    try:
        with pytest.raises(ImportError, match="scikit-image"):
            synthetic.texture("brick")
    finally:
        synthetic._load_texture.cache_clear()  # do not keep a cache built without skimage

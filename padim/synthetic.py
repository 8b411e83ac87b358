"""An MVTec-like anomaly benchmark built from real texture photographs, no download.

The photographs are the CC0 textures that ship inside scikit-image (``brick``,
``grass``, ``gravel``: 512x512 grey). Normal images are seeded random crops; defective
images are normal crops with one synthetic defect pasted in and a pixel mask of it:

- ``"scratch"``: a thin bright or dark random polyline (a scratch or a hair);
- ``"blob"``: an irregular patch pulled towards another intensity and tint (a stain);
- ``"cutpaste"``: a rectangle of the same texture from elsewhere, rotated by a multiple
  of 90 degrees and/or flipped, pasted in (CutPaste, Li et al. 2021): the hardest
  kind, because every pixel in it is real texture. It is redrawn until it visibly
  changes the crop, since a flat patch pasted on a flat area is no defect.

Train and test crops come from disjoint halves of the photograph (left and right
columns), so no test crop overlaps a training crop.

Everything is deterministic for a seed. Images are float32 tensors (3, H, W) RGB in
[0, 1] (the grey photograph repeated on three channels), masks are bool (H, W).
Only numpy, torch and pillow are needed, plus scikit-image for the photographs
themselves, imported lazily so that importing this module never needs it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = [
    "DEFECT_KINDS",
    "TEXTURES",
    "DefectDataset",
    "Region",
    "add_defect",
    "defective_crops",
    "make_dataset",
    "normal_crops",
    "texture",
]

TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel")
DEFECT_KINDS: tuple[str, ...] = ("scratch", "blob", "cutpaste")

Region = Literal["train", "test", "all"]
"""Which columns of the photograph crops come from: left half, right half, or all."""

# Defect sizes, as fractions of the crop side, so that a defect covers a similar share
# of the image (and of PaDiM's patch grid) at any crop size.
_SCRATCH_LENGTH = (0.3, 0.7)  # total polyline length
_SCRATCH_SEGMENTS = (2, 5)  # number of straight pieces
_BLOB_RADIUS = (0.06, 0.14)  # mean radius of the irregular polygon
_BLOB_VERTICES = 12
_PATCH_SIDE = (0.12, 0.25)  # cut-paste rectangle sides
# Mean absolute change a cut-paste must make inside its mask (about 13 grey levels),
# and how many draws it gets to find one that does.
_CUTPASTE_MIN_CHANGE = 0.05
_CUTPASTE_TRIES = 20


@functools.lru_cache(maxsize=len(TEXTURES))
def _load_texture(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError as exc:  # scikit-image is a test/demo extra, not a core dependency
        raise ImportError(
            "padim.synthetic needs scikit-image for its texture photographs: "
            "pip install 'padimd[test]' (or scikit-image)"
        ) from exc
    grey = np.asarray(getattr(skimage.data, name)())  # (H, W) uint8
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32) / 255.0  # (H, W, 3)
    rgb.flags.writeable = False  # cached and shared: callers must not edit it in place
    return rgb


def texture(name: str) -> np.ndarray:
    """Return the texture photograph ``name`` as a read-only float32 (H, W, 3) RGB array in [0, 1].

    Raises ValueError for a name not in TEXTURES, ImportError without scikit-image.
    """
    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; choose one of {TEXTURES}")
    return _load_texture(name)


def _columns(width: int, region: Region) -> tuple[int, int]:
    """Column range [start, stop) of the photograph that ``region`` may crop from."""
    half = width // 2
    if region == "train":
        return 0, half
    if region == "test":
        return half, width
    if region == "all":
        return 0, width
    raise ValueError(f"region must be 'train', 'test' or 'all', got {region!r}")


def _check_count(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")


def _crop_positions(
    name: str, n: int, size: int, region: Region, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Top-left corners of ``n`` random size x size crops inside ``region``."""
    height, width, _ = texture(name).shape
    start, stop = _columns(width, region)
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    if size > height or size > stop - start:
        raise ValueError(
            f"size {size} does not fit region {region!r} of {name!r} "
            f"({height} x {stop - start} pixels)"
        )
    rows = rng.integers(0, height - size + 1, size=n)
    cols = rng.integers(start, stop - size + 1, size=n)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def _to_tensor(crop: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float array -> contiguous float32 (3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32))


def normal_crops(
    name: str, n: int, size: int, seed: int, region: Region = "all"
) -> torch.Tensor:
    """``n`` seeded random crops of texture ``name``: float32 (n, 3, size, size) in [0, 1]."""
    _check_count(n)
    rng = np.random.default_rng(seed)
    tex = texture(name)
    crops = [
        _to_tensor(tex[r : r + size, c : c + size])
        for r, c in _crop_positions(name, n, size, region, rng)
    ]
    return torch.stack(crops) if crops else torch.empty(0, 3, size, size)


def _draw_mask(
    size: int, draw: Callable[[ImageDraw.ImageDraw], None], anchor: tuple[float, float]
) -> np.ndarray:
    """Rasterise one shape drawn by ``draw(ImageDraw)`` into a bool (size, size) mask.

    ``anchor`` (x, y) is a point of the shape, marked when the rasteriser drew nothing
    (a sub-pixel shape at a tiny crop size) so that a defect always has a mask.
    """
    canvas = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(canvas))
    mask = np.asarray(canvas) > 0
    if not mask.any():
        mask = mask.copy()
        mask[min(int(anchor[1]), size - 1), min(int(anchor[0]), size - 1)] = True
    return mask


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    segments = int(rng.integers(_SCRATCH_SEGMENTS[0], _SCRATCH_SEGMENTS[1] + 1))
    step = rng.uniform(*_SCRATCH_LENGTH) * size / segments
    # A random walk whose heading drifts a little per segment: scratches are mostly
    # straight with kinks, not a scribble.
    heading = rng.uniform(0.0, 2.0 * math.pi)
    point = rng.uniform(0.2 * size, 0.8 * size, size=2)
    points = [tuple(point)]
    for _ in range(segments):
        heading += rng.uniform(-0.6, 0.6)
        direction = np.array([math.cos(heading), math.sin(heading)])
        point = np.clip(point + step * direction, 0, size - 1)
        points.append(tuple(point))
    width = int(rng.integers(1, max(1, size // 64) + 2))  # 1..3 px at 128 px
    mask = _draw_mask(
        size, lambda d: d.line(points, fill=255, width=width, joint="curve"), points[0]
    )
    # Bright or dark, whichever differs more from the pixels it crosses, so that the
    # scratch changes what it covers even on a very dark or very bright texture.
    value = 1.0 if img[mask].mean() < 0.5 else 0.0
    alpha = rng.uniform(0.8, 1.0)
    out = img.copy()
    out[mask] = (1.0 - alpha) * img[mask] + alpha * value
    return out, mask


def _blob(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    radius = rng.uniform(*_BLOB_RADIUS) * size
    centre = rng.uniform(radius, size - radius, size=2)
    # A star-shaped polygon with jittered radii: irregular like a stain, but one piece.
    angles = np.sort(rng.uniform(0.0, 2.0 * math.pi, size=_BLOB_VERTICES))
    radii = radius * rng.uniform(0.5, 1.4, size=_BLOB_VERTICES)
    vertices = [
        (float(centre[0] + r * math.cos(a)), float(centre[1] + r * math.sin(a)))
        for a, r in zip(angles, radii, strict=True)
    ]
    mask = _draw_mask(size, lambda d: d.polygon(vertices, fill=255), tuple(centre))
    # Pull the patch towards a grey level well away from its own mean, with a tint:
    # the texture still shows through (alpha < 1), as through a stain.
    mean = float(img[mask].mean())
    shift = rng.uniform(0.25, 0.45)
    grey = mean - shift if mean > 0.5 else mean + shift
    target = np.clip(grey + rng.uniform(-0.1, 0.1, size=3), 0.0, 1.0).astype(np.float32)
    alpha = rng.uniform(0.5, 0.85)
    out = img.copy()
    out[mask] = (1.0 - alpha) * img[mask] + alpha * target
    return out, mask


def _cutpaste_once(
    img: np.ndarray, rng: np.random.Generator, source: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    side = max(2, int(round(rng.uniform(*_PATCH_SIDE) * size)))
    src_r = int(rng.integers(0, source.shape[0] - side + 1))
    src_c = int(rng.integers(0, source.shape[1] - side + 1))
    patch = source[src_r : src_r + side, src_c : src_c + side]
    # At least one of rotation or flip, so the patch never pastes in its own orientation.
    turns = int(rng.integers(0, 4))
    flip = bool(rng.integers(0, 2)) or turns == 0
    patch = np.rot90(patch, k=turns, axes=(0, 1))
    if flip:
        patch = patch[:, ::-1]
    patch = np.clip(patch * rng.uniform(0.9, 1.1), 0.0, 1.0)  # CutPaste's colour jitter
    row, col = rng.integers(0, size - side + 1, size=2)
    out = img.copy()
    out[row : row + side, col : col + side] = patch
    mask = np.zeros((size, size), dtype=bool)
    mask[row : row + side, col : col + side] = True
    return out, mask


def _cutpaste(
    img: np.ndarray, rng: np.random.Generator, source: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # A flat patch (a plain brick face) pasted onto a flat area changes almost nothing:
    # a labelled defect no one could see only adds noise to the benchmark. Redraw until
    # the paste is visible; keep the most visible try if none is.
    best, best_change = None, -1.0
    for _ in range(_CUTPASTE_TRIES):
        out, mask = _cutpaste_once(img, rng, source)
        change = float(np.abs(out[mask] - img[mask]).mean())
        if change > best_change:
            best, best_change = (out, mask), change
        if change >= _CUTPASTE_MIN_CHANGE:
            break
    assert best is not None  # _CUTPASTE_TRIES >= 1
    return best


def add_defect(
    image: torch.Tensor, kind: str, rng: np.random.Generator, source: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste one defect of ``kind`` into a copy of ``image``.

    ``image`` is float32 (3, S, S) in [0, 1]; ``source`` is the (H, W, 3) photograph
    cut-paste takes its patch from (required for ``"cutpaste"``). Returns the defective
    image (3, S, S) float32 in [0, 1] and its bool (S, S) mask; pixels outside the mask
    are bit-for-bit those of ``image``.
    """
    if kind not in DEFECT_KINDS:
        raise ValueError(f"unknown defect kind {kind!r}; choose from {DEFECT_KINDS}")
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] != image.shape[2]:
        raise ValueError(f"image must be (3, S, S), got {tuple(image.shape)}")
    img = image.detach().cpu().numpy().transpose(1, 2, 0).astype(np.float32)  # (S, S, 3) copy
    if kind == "scratch":
        out, mask = _scratch(img, rng)
    elif kind == "blob":
        out, mask = _blob(img, rng)
    else:
        if source is None:
            raise ValueError("cutpaste needs the source photograph")
        out, mask = _cutpaste(img, rng, source)
    return _to_tensor(np.clip(out, 0.0, 1.0)), torch.from_numpy(mask.copy())


def defective_crops(
    name: str,
    n: int,
    size: int,
    seed: int,
    kinds: Sequence[str] = DEFECT_KINDS,
    region: Region = "all",
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``n`` seeded crops of texture ``name``, each with one pasted defect.

    Kinds cycle through ``kinds`` in order so every kind is equally represented.
    Returns images float32 (n, 3, size, size) in [0, 1], masks bool (n, size, size)
    and the kind of each image. Cut-paste patches come from anywhere in the photograph:
    they are normal texture, only misplaced.
    """
    _check_count(n)
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError("kinds must not be empty")
    for kind in kinds:
        if kind not in DEFECT_KINDS:
            raise ValueError(f"unknown defect kind {kind!r}; choose from {DEFECT_KINDS}")
    rng = np.random.default_rng(seed)
    tex = texture(name)
    images, masks, labels = [], [], []
    for i, (r, c) in enumerate(_crop_positions(name, n, size, region, rng)):
        kind = kinds[i % len(kinds)]
        image, mask = add_defect(_to_tensor(tex[r : r + size, c : c + size]), kind, rng, tex)
        images.append(image)
        masks.append(mask)
        labels.append(kind)
    if not images:
        return torch.empty(0, 3, size, size), torch.empty(0, size, size, dtype=torch.bool), []
    return torch.stack(images), torch.stack(masks), labels


@dataclass(frozen=True)
class DefectDataset:
    """One texture's benchmark: normal training crops and a labelled test set.

    ``train`` (N, 3, S, S), ``test_normal`` (M, 3, S, S), ``test_defective`` (K, 3, S, S)
    are float32 in [0, 1]; ``defect_masks`` (K, S, S) bool; ``defect_kinds`` has K names.
    Train crops come from the left half of the photograph, test crops from the right.
    """

    texture: str
    train: torch.Tensor
    test_normal: torch.Tensor
    test_defective: torch.Tensor
    defect_masks: torch.Tensor
    defect_kinds: list[str]

    @property
    def test_images(self) -> torch.Tensor:
        """Normal then defective test images, (M + K, 3, S, S)."""
        return torch.cat([self.test_normal, self.test_defective])

    @property
    def test_labels(self) -> torch.Tensor:
        """Image labels for ``test_images``: 0 normal, 1 defective, int64 (M + K,)."""
        return torch.cat(
            [
                torch.zeros(len(self.test_normal), dtype=torch.int64),
                torch.ones(len(self.test_defective), dtype=torch.int64),
            ]
        )

    @property
    def test_masks(self) -> torch.Tensor:
        """Pixel labels for ``test_images`` (all False for normals), bool (M + K, S, S)."""
        size = self.test_normal.shape[-2:]
        empty = torch.zeros(len(self.test_normal), *size, dtype=torch.bool)
        return torch.cat([empty, self.defect_masks])


def make_dataset(
    name: str,
    size: int = 128,
    n_train: int = 40,
    n_test_normal: int = 20,
    n_test_defective: int = 30,
    seed: int = 0,
    kinds: Sequence[str] = DEFECT_KINDS,
) -> DefectDataset:
    """Build a DefectDataset for texture ``name``; the same arguments give the same tensors.

    ``size`` must fit in half the photograph's width (256 pixels for the bundled ones).
    """
    # Independent streams per split, so that changing one count leaves the others' crops.
    train_seed, normal_seed, defect_seed = (
        int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(3)
    )
    defective, masks, labels = defective_crops(
        name, n_test_defective, size, defect_seed, kinds, region="test"
    )
    return DefectDataset(
        texture=name,
        train=normal_crops(name, n_train, size, train_seed, region="train"),
        test_normal=normal_crops(name, n_test_normal, size, normal_seed, region="test"),
        test_defective=defective,
        defect_masks=masks,
        defect_kinds=labels,
    )

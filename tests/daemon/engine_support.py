"""Builders shared by the daemon core tests: tiny settings, encoded frames, records.

The model is the smallest that exercises everything: 64x64 frames, a random-init
backbone (weights="none", nothing to read from disk) and 16 embedding channels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from daemon.records import Headers, InboundRecord
from daemon.settings import (
    ModelSettings,
    ScoringSettings,
    Settings,
    SnapshotSettings,
    ThresholdSettings,
)

TOPIC = "camera-frames"
MODEL_SIZE = (64, 64)
FRAME_WH = (96, 72)  # not the model size, so resizing and box scaling are exercised
MIN_FRAMES = 6


def tiny_model_settings() -> ModelSettings:
    """The shared test model: what ``tiny_extractor`` is built from."""
    return ModelSettings(size=MODEL_SIZE, weights="none", num_embeddings=16, device="cpu",
                         min_frames_before_scoring=MIN_FRAMES)


def tiny_settings(snapshot_dir: Path, **sections: object) -> Settings:
    """Settings for engine tests; keyword arguments replace whole sections."""
    values: dict[str, object] = {
        "model": tiny_model_settings(),
        "threshold": ThresholdSettings(min_normal_scores=4, window=64),
        "snapshots": SnapshotSettings(dir=snapshot_dir, retention=2),
        "scoring": ScoringSettings(max_batch_size=8),
    }
    values.update(sections)
    return Settings(**values)


def normal_pixels(rng: np.random.Generator, wh: tuple[int, int] = FRAME_WH) -> np.ndarray:
    """A camera's usual view: flat grey with mild sensor noise, (H, W, 3) uint8."""
    return (110 + rng.integers(0, 12, (wh[1], wh[0], 3))).astype(np.uint8)


def defect_pixels(rng: np.random.Generator, wh: tuple[int, int] = FRAME_WH) -> np.ndarray:
    """The usual view with a saturated magenta patch in the upper left quarter."""
    pixels = normal_pixels(rng, wh)
    pixels[8:32, 12:44] = (255, 0, 255)
    return pixels


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """``pixels`` (H, W, 3) encoded as ``fmt``."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def record(
    offset: int,
    value: bytes | None,
    *,
    camera: bytes | None = b"cam-1",
    label: str | None = "normal",
    headers: Headers = (),
    partition: int = 0,
    topic: str = TOPIC,
    timestamp_ms: int = 1_700_000_000_000,
) -> InboundRecord:
    """An input record; ``label`` None sends no label header."""
    label_header: Headers = (("label", label.encode()),) if label is not None else ()
    return InboundRecord(topic=topic, partition=partition, offset=offset, key=camera,
                         value=value, headers=label_header + headers,
                         timestamp_ms=timestamp_ms)

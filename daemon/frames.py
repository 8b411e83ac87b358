"""Turn an input record into a ``Frame`` the model can use, or say why it cannot.

Decoding never raises on bad input: it returns a ``DecodeError`` value whose ``reason`` is
one of the ``padimd_decode_errors_total`` reasons of docs/metrics.md, and the engine
dead-letters the record with it.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import torch
from PIL import Image

from daemon.records import InboundRecord
from daemon.settings import InputSettings

DecodeReason = Literal[
    "undecodable", "too_large", "decompression_bomb", "missing_key", "bad_header", "bad_image"
]
Label = Literal["normal", "anomalous"]

# Camera ids name snapshot directories (percent-escaped, up to 3 bytes per byte) and
# label metrics: 64 UTF-8 bytes keep an escaped name well under the 255-byte file limit.
MAX_CAMERA_ID_BYTES = 64

_CONTENT_TYPES: dict[str, str] = {"image/jpeg": "JPEG", "image/jpg": "JPEG",
                                  "image/png": "PNG", "image/webp": "WEBP"}


@dataclass(frozen=True, slots=True, eq=False)  # eq on a tensor field would be ambiguous
class Frame:
    """A decoded, validated input frame at model size."""

    camera: str
    label: Label | None  # None: unlabelled
    capture_time_s: float  # unix seconds
    image: torch.Tensor  # (3, H, W) float32 RGB in [0, 1], H x W = model size
    original_size: tuple[int, int]  # (width, height) of the frame as sent
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Why a record is not a usable frame (a value, not an exception)."""

    reason: DecodeReason
    detail: str


class FrameDecoder:
    """Decodes records according to the ``input`` settings, resizing to the model size."""

    def __init__(self, settings: InputSettings, size: tuple[int, int]) -> None:
        """``size`` is the model input (height, width)."""
        self._settings = settings
        self._size = size

    def camera_of(self, record: InboundRecord) -> str | DecodeError:
        """The record's camera id (key, or the configured header), validated."""
        if self._settings.camera_header is not None:
            raw = record.header(self._settings.camera_header)
            where = f"header {self._settings.camera_header!r}"
        else:
            raw = record.key
            where = "record key"
        if not raw:
            return DecodeError("missing_key", f"{where} is absent or empty")
        if len(raw) > MAX_CAMERA_ID_BYTES:
            return DecodeError(
                "missing_key", f"{where} is {len(raw)} bytes, at most {MAX_CAMERA_ID_BYTES}")
        try:
            camera = raw.decode("utf-8")
        except UnicodeDecodeError:
            return DecodeError("missing_key", f"{where} is not UTF-8")
        if not camera.isprintable() or camera.strip() != camera:
            return DecodeError(
                "missing_key", f"{where} has control characters or surrounding spaces")
        return camera

    def decode(self, record: InboundRecord) -> Frame | DecodeError:
        """The frame carried by ``record``, or why there is none."""
        camera = self.camera_of(record)
        if isinstance(camera, DecodeError):
            return camera
        label = self._label(record)
        if isinstance(label, DecodeError):
            return label
        capture = self._capture_time(record)
        if isinstance(capture, DecodeError):
            return capture
        declared = self._declared_format(record)
        if isinstance(declared, DecodeError):
            return declared
        image = self._image(record.value, declared)
        if isinstance(image, DecodeError):
            return image
        tensor, original_size = image
        return Frame(camera=camera, label=label, capture_time_s=capture, image=tensor,
                     original_size=original_size, topic=record.topic,
                     partition=record.partition, offset=record.offset)

    def _label(self, record: InboundRecord) -> Label | None | DecodeError:
        raw = record.header(self._settings.label_header)
        if raw is None:
            return None
        try:
            text = raw.decode("utf-8").strip().lower()
        except UnicodeDecodeError:
            return DecodeError("bad_header", f"header {self._settings.label_header!r} is not UTF-8")
        if text == "normal":
            return "normal"
        if text == "anomalous":
            return "anomalous"
        return DecodeError(
            "bad_header",
            f"header {self._settings.label_header!r} is {text[:40]!r}, "
            "expected 'normal' or 'anomalous'")

    def _capture_time(self, record: InboundRecord) -> float | DecodeError:
        name = self._settings.capture_time_header
        raw = record.header(name)
        if raw is None:
            return record.timestamp_ms / 1000.0  # the broker's time is the best we have
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return DecodeError("bad_header", f"header {name!r} is not UTF-8")
        seconds = _parse_timestamp(text)
        if seconds is None:
            return DecodeError(
                "bad_header",
                f"header {name!r} is {text[:40]!r}: expected unix seconds or RFC 3339 with "
                "a UTC offset")
        return seconds

    def _declared_format(self, record: InboundRecord) -> str | None | DecodeError:
        raw = record.header("content-type")
        if raw is None:
            return None
        text = raw.decode("latin-1").split(";", 1)[0].strip().lower()
        fmt = _CONTENT_TYPES.get(text)
        if fmt is None or fmt not in self._settings.allowed_formats:
            return DecodeError(
                "bad_header", f"content-type {text[:60]!r} is not an allowed image type "
                f"({', '.join(self._settings.allowed_formats)})")
        return fmt

    def _image(
        self, value: bytes | None, declared: str | None
    ) -> tuple[torch.Tensor, tuple[int, int]] | DecodeError:
        if not value:
            return DecodeError("undecodable", "record value is empty")
        if len(value) > self._settings.max_image_bytes:
            return DecodeError(
                "too_large",
                f"{len(value)} bytes > input.max_image_bytes {self._settings.max_image_bytes}")
        try:
            # PIL warns (and above twice its limit raises) about huge images; our own
            # max_pixels check below is the policy, so the warning is only noise.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(value))  # reads the header only
        except Image.DecompressionBombError as exc:
            return DecodeError("decompression_bomb", str(exc))
        except Exception as exc:  # noqa: BLE001 - untrusted bytes, see _describe
            return DecodeError("undecodable", f"not an image Pillow can read: {_describe(exc)}")
        with image:
            width, height = image.size
            if width <= 0 or height <= 0:
                return DecodeError("bad_image", f"image has size {width}x{height}")
            if width * height > self._settings.max_pixels:
                return DecodeError(
                    "decompression_bomb",
                    f"{width}x{height} = {width * height} pixels > input.max_pixels "
                    f"{self._settings.max_pixels}")
            # Many cameras write MPO (JPEG with extra pictures appended): it is a JPEG.
            actual = "JPEG" if image.format == "MPO" else image.format
            if actual not in self._settings.allowed_formats:
                return DecodeError(
                    "bad_image", f"format {actual} is not in input.allowed_formats")
            if declared is not None and declared != actual:
                return DecodeError(
                    "bad_image", f"content-type says {declared} but the data is {actual}")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    rgb = image.convert("RGB")
                height_m, width_m = self._size
                resized = rgb.resize((width_m, height_m), Image.Resampling.BILINEAR)
            except Image.DecompressionBombError as exc:
                return DecodeError("decompression_bomb", str(exc))
            except Exception as exc:  # noqa: BLE001 - untrusted bytes, see _describe
                # Truncated or corrupt pixel data: the header was fine, the body is not.
                return DecodeError("bad_image", f"image data is corrupt: {_describe(exc)}")
        pixels = np.asarray(resized, dtype=np.uint8)  # (H, W, 3)
        tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)
        return tensor, (width, height)


def _describe(exc: Exception) -> str:
    """Why Pillow refused the bytes.

    The image steps catch every Exception: the bytes are untrusted, and Pillow's
    decoders fed crafted data raise more than OSError/ValueError (struct.error,
    IndexError, EOFError, TypeError, ...). Each is a fact about the input, so the record
    is dead-lettered and the service goes on."""
    return f"{type(exc).__name__}: {exc}"


def _parse_timestamp(text: str) -> float | None:
    """Unix seconds (decimal) or RFC 3339 with an offset; None when neither."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None  # a local time without an offset is ambiguous
        return parsed.timestamp()
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds

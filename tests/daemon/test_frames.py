"""daemon.frames: records become model-size frames, or a DecodeError with the right reason."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from daemon.frames import DecodeError, Frame, FrameDecoder
from daemon.settings import InputSettings
from tests.daemon.engine_support import FRAME_WH, MODEL_SIZE, encode, normal_pixels, record


def decoder(**settings: object) -> FrameDecoder:
    return FrameDecoder(InputSettings(**settings), MODEL_SIZE)


def png_frame() -> bytes:
    return encode(normal_pixels(np.random.default_rng(0)))


def reason_of(result: Frame | DecodeError) -> str:
    assert isinstance(result, DecodeError), f"expected a DecodeError, got {result!r}"
    return result.reason


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but carries almost no pixel data
    (what a decompression bomb looks like before it is inflated)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def test_png_becomes_model_size_rgb_frame() -> None:
    frame = decoder().decode(record(5, png_frame()))
    assert isinstance(frame, Frame)
    assert frame.image.shape == (3, *MODEL_SIZE)
    assert frame.image.dtype == torch.float32
    assert 0.0 <= float(frame.image.min()) and float(frame.image.max()) <= 1.0
    assert frame.original_size == FRAME_WH
    assert (frame.camera, frame.label, frame.offset) == ("cam-1", "normal", 5)


def test_jpeg_and_greyscale_are_converted_to_rgb() -> None:
    grey = Image.fromarray(np.full((40, 50), 90, np.uint8), mode="L")
    buffer = io.BytesIO()
    grey.save(buffer, format="JPEG")
    frame = decoder().decode(record(0, buffer.getvalue()))
    assert isinstance(frame, Frame)
    assert frame.image.shape == (3, *MODEL_SIZE)
    assert frame.original_size == (50, 40)


def test_garbage_is_undecodable() -> None:
    assert reason_of(decoder().decode(record(0, b"this is not an image"))) == "undecodable"


def test_empty_value_is_undecodable() -> None:
    assert reason_of(decoder().decode(record(0, None))) == "undecodable"


def test_truncated_image_is_bad_image() -> None:
    data = png_frame()
    assert reason_of(decoder().decode(record(0, data[: len(data) // 2]))) == "bad_image"


def test_oversized_record_is_too_large() -> None:
    data = png_frame()
    assert reason_of(decoder(max_image_bytes=len(data) - 1).decode(record(0, data))) == "too_large"


def test_header_claiming_huge_dimensions_is_a_decompression_bomb() -> None:
    bomb = png_header_only(50_000, 50_000)  # 2.5 gigapixels in a few dozen bytes
    assert reason_of(decoder().decode(record(0, bomb))) == "decompression_bomb"


def test_max_pixels_is_the_bomb_limit() -> None:
    data = png_frame()  # 96 x 72 = 6912 pixels
    assert reason_of(decoder(max_pixels=6911).decode(record(0, data))) == "decompression_bomb"
    assert isinstance(decoder(max_pixels=6912).decode(record(0, data)), Frame)


def test_disallowed_format_is_bad_image() -> None:
    buffer = io.BytesIO()
    Image.fromarray(normal_pixels(np.random.default_rng(0))).save(buffer, format="GIF")
    assert reason_of(decoder().decode(record(0, buffer.getvalue()))) == "bad_image"


def test_content_type_contradicting_the_data_is_bad_image() -> None:
    rec = record(0, png_frame(), headers=(("content-type", b"image/jpeg"),))
    assert reason_of(decoder().decode(rec)) == "bad_image"


def test_unsupported_content_type_is_bad_header() -> None:
    rec = record(0, png_frame(), headers=(("content-type", b"text/plain"),))
    assert reason_of(decoder().decode(rec)) == "bad_header"


@pytest.mark.parametrize("key", [None, b"", b"\xff\xfe", b"x" * 65, b"cam\n1"])
def test_unusable_camera_key_is_missing_key(key: bytes | None) -> None:
    assert reason_of(decoder().decode(record(0, png_frame(), camera=key))) == "missing_key"


def test_camera_header_replaces_the_key() -> None:
    rec = record(0, png_frame(), camera=None, headers=(("camera", b"dock-7"),))
    frame = decoder(camera_header="camera").decode(rec)
    assert isinstance(frame, Frame) and frame.camera == "dock-7"


def test_unknown_label_is_bad_header() -> None:
    assert reason_of(decoder().decode(record(0, png_frame(), label="weird"))) == "bad_header"


def test_non_utf8_label_is_bad_header() -> None:
    rec = record(0, png_frame(), label=None, headers=(("label", b"\xff"),))
    assert reason_of(decoder().decode(rec)) == "bad_header"


def test_missing_label_is_unlabelled() -> None:
    frame = decoder().decode(record(0, png_frame(), label=None))
    assert isinstance(frame, Frame) and frame.label is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(b"1700000123.25", 1700000123.25), (b"2023-11-14T22:15:23.5Z", 1700000123.5),
     (b"2023-11-14T23:15:23.5+01:00", 1700000123.5)],
)
def test_capture_time_header_formats(text: bytes, seconds: float) -> None:
    frame = decoder().decode(record(0, png_frame(), headers=(("capture_ts", text),)))
    assert isinstance(frame, Frame) and frame.capture_time_s == pytest.approx(seconds)


@pytest.mark.parametrize("text", [b"yesterday", b"2023-11-14T22:15:23", b"nan", b"-5", b"\xff"])
def test_bad_capture_time_is_bad_header(text: bytes) -> None:
    rec = record(0, png_frame(), headers=(("capture_ts", text),))
    assert reason_of(decoder().decode(rec)) == "bad_header"


def test_capture_time_falls_back_to_record_timestamp() -> None:
    frame = decoder().decode(record(0, png_frame(), timestamp_ms=1_700_000_000_250))
    assert isinstance(frame, Frame) and frame.capture_time_s == pytest.approx(1_700_000_000.25)


def test_mpo_from_cameras_counts_as_jpeg() -> None:
    first = Image.fromarray(normal_pixels(np.random.default_rng(0)))
    buffer = io.BytesIO()
    first.save(buffer, format="MPO", save_all=True, append_images=[first.copy()])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    rec = record(0, buffer.getvalue(), headers=(("content-type", b"image/jpeg"),))
    assert isinstance(decoder().decode(rec), Frame)


def test_unexpected_decoder_exception_is_bad_image(monkeypatch: pytest.MonkeyPatch) -> None:
    # Crafted files make Pillow raise struct.error, IndexError, ...: still just bad input.
    def explode(self: Image.Image, *args: object, **kwargs: object) -> Image.Image:
        raise IndexError("crafted chunk offsets")

    monkeypatch.setattr(Image.Image, "convert", explode)
    result = decoder().decode(record(0, png_frame()))
    assert isinstance(result, DecodeError)
    assert result.reason == "bad_image" and "IndexError" in result.detail

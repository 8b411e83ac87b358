"""daemon.events: event JSON, regions in original pixels, heatmaps, dead letters."""

from __future__ import annotations

import base64
import io
import json
import math

import pytest
import torch
from PIL import Image

from daemon.events import build_event, dead_letter, event_message, find_regions, heatmap_png
from daemon.frames import DecodeError, Frame
from tests.daemon.engine_support import MODEL_SIZE, record


def frame(original_size: tuple[int, int] = (128, 256)) -> Frame:
    return Frame(camera="cam-1", label=None, capture_time_s=1_700_000_000.5,
                 image=torch.zeros(3, *MODEL_SIZE), original_size=original_size,
                 topic="camera-frames", partition=3, offset=42)


def map_with_blob() -> torch.Tensor:
    """A (64, 64) map: background 1, a 10x20 blob of 5 at rows 8..17, cols 16..35."""
    anomaly_map = torch.ones(MODEL_SIZE)
    anomaly_map[8:18, 16:36] = 5.0
    return anomaly_map


def test_region_box_is_in_original_pixels() -> None:
    # Original 128 wide x 256 high: x scales by 2, y by 4.
    regions = find_regions(map_with_blob(), 2.0, (128, 256), min_area_px=1)
    assert len(regions) == 1
    assert regions[0].box == (32, 32, 72, 72)
    assert regions[0].area_px == 200
    assert regions[0].peak_score == 5.0


def test_regions_are_separate_components_above_min_area() -> None:
    anomaly_map = map_with_blob()
    anomaly_map[50:52, 50:52] = 9.0  # 4 pixels: below the minimum area
    anomaly_map[40:50, 0:10] = 3.0
    regions = find_regions(anomaly_map, 2.0, MODEL_SIZE, min_area_px=16)
    assert [r.box for r in regions] == [(16, 8, 36, 18), (0, 40, 10, 50)]


def test_no_regions_without_a_threshold() -> None:
    assert find_regions(map_with_blob(), math.nan, (64, 64), min_area_px=1) == ()


def test_event_json_has_stable_id_and_null_unknown_threshold() -> None:
    event = build_event(frame(), score=5.0, threshold=math.nan, anomaly_map=map_with_blob(),
                        frames_learned=12.0, snapshot_version=3, scored_time_s=1_700_000_001.0,
                        region_min_area_px=1, with_heatmap=False)
    message = event_message(event, "padimd-events", 1_700_000_000.5)
    body = json.loads(message.value)
    assert body["event_id"] == "camera-frames:3:42"
    assert body["threshold"] is None and body["is_anomaly"] is False
    assert body["capture_time"].startswith("2023-11-14T22:13:20.5")
    assert body["model"] == {"frames_learned": 12.0, "snapshot_version": 3}
    assert message.key == b"cam-1" and message.kind == "event"
    assert message.capture_time_s == 1_700_000_000.5


def test_anomalous_event_carries_regions_and_heatmap() -> None:
    event = build_event(frame(), score=5.0, threshold=2.0, anomaly_map=map_with_blob(),
                        frames_learned=12.0, snapshot_version=0, scored_time_s=0.0,
                        region_min_area_px=1, with_heatmap=True)
    assert event.is_anomaly
    assert [r.box for r in event.regions] == [(32, 32, 72, 72)]
    assert event.heatmap_png is not None
    image = Image.open(io.BytesIO(base64.b64decode(event.heatmap_png)))
    assert image.size == (MODEL_SIZE[1], MODEL_SIZE[0])
    assert image.getpixel((20, 10)) == 255 and image.getpixel((0, 0)) == 64  # 5/2, 1/2 of 128


def test_score_equal_to_threshold_is_not_an_anomaly() -> None:
    event = build_event(frame(), score=2.0, threshold=2.0, anomaly_map=map_with_blob(),
                        frames_learned=1.0, snapshot_version=0, scored_time_s=0.0,
                        region_min_area_px=1, with_heatmap=False)
    assert not event.is_anomaly and event.regions == ()


def test_heatmap_without_threshold_scales_to_the_maximum() -> None:
    data = base64.b64decode(heatmap_png(map_with_blob(), math.nan))
    image = Image.open(io.BytesIO(data))
    assert image.getpixel((20, 10)) == 255 and image.getpixel((0, 0)) == 51


def test_dead_letter_keeps_original_bytes_and_headers() -> None:
    original = record(7, b"\x00garbage\xff", headers=(("capture_ts", b"123"),), partition=2)
    message = dead_letter(original, DecodeError("undecodable", "not an image"), "padimd-dlq")
    assert message.topic == "padimd-dlq" and message.kind == "dead_letter"
    assert message.value == b"\x00garbage\xff"
    assert message.key == b"cam-1"
    assert message.headers[: len(original.headers)] == original.headers
    added = dict(message.headers[len(original.headers):])
    assert added == {"error_reason": b"undecodable", "error_detail": b"not an image",
                     "source_topic": b"camera-frames", "source_partition": b"2",
                     "source_offset": b"7"}


@pytest.mark.parametrize("value", [None, b""])
def test_dead_letter_of_empty_record_has_empty_value(value: bytes | None) -> None:
    message = dead_letter(record(0, value), DecodeError("undecodable", "empty"), "dlq")
    assert message.value == b""

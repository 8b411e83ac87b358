"""The messages the daemon produces: anomaly events and dead letters.

An event's id is ``{topic}:{partition}:{offset}`` of the frame it scores, so a frame
replayed after a crash yields an event with the same id and consumers can deduplicate.
Region boxes are ``[x0, y0, x1, y1]`` in the original frame's pixels, x1/y1 exclusive
(as PIL's ``crop``): connected components (8-connected) of the smoothed anomaly map
above the threshold, computed at model size and scaled out to cover the same area.
"""

from __future__ import annotations

import base64
import io
import math
from datetime import UTC, datetime

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict
from scipy import ndimage

from daemon.frames import DecodeError, Frame, Label
from daemon.records import InboundRecord, OutboundMessage

EVENT_CONTENT_TYPE = b"application/json"
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Source(_Frozen):
    """Where the scored frame was read from."""

    topic: str
    partition: int
    offset: int


class Region(_Frozen):
    """One connected area above the threshold."""

    box: tuple[int, int, int, int]  # [x0, y0, x1, y1], original pixels, x1/y1 exclusive
    area_px: int  # at model size
    peak_score: float


class ModelInfo(_Frozen):
    """The state of the camera's model when it scored the frame."""

    frames_learned: float  # weighted when forgetting
    snapshot_version: int  # sequence number of the camera's last snapshot, 0: none yet


class Event(_Frozen):
    """One scored frame (anomalies only unless ``scoring.emit_all_frames``)."""

    event_id: str
    camera: str
    source: Source
    capture_time: datetime
    scored_time: datetime
    score: float
    threshold: float | None  # None while unknown (JSON has no NaN)
    is_anomaly: bool
    label: Label | None
    image_size: tuple[int, int]  # (width, height) of the original frame
    regions: tuple[Region, ...]
    model: ModelInfo
    heatmap_png: str | None = None  # base64 PNG, model size, see heatmap_png()


def event_id(topic: str, partition: int, offset: int) -> str:
    """The stable id of the event for the frame at this position."""
    return f"{topic}:{partition}:{offset}"


def find_regions(
    anomaly_map: torch.Tensor,
    threshold: float,
    original_size: tuple[int, int],
    *,
    min_area_px: int,
) -> tuple[Region, ...]:
    """Boxes around the 8-connected areas of ``anomaly_map`` (H, W) above ``threshold``
    with at least ``min_area_px`` pixels, scaled to ``original_size`` (width, height);
    largest peak first."""
    if math.isnan(threshold):
        return ()
    values = anomaly_map.detach().to("cpu", torch.float32).numpy()  # (H, W)
    labels, count = ndimage.label(values > threshold, structure=_EIGHT_CONNECTED)
    if count == 0:
        return ()
    height, width = values.shape
    width_o, height_o = original_size
    sx, sy = width_o / width, height_o / height
    regions: list[Region] = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        mask = labels[window] == index
        area = int(mask.sum())
        if area < min_area_px:
            continue
        rows, cols = window
        box = (
            max(0, math.floor(cols.start * sx)),
            max(0, math.floor(rows.start * sy)),
            min(width_o, math.ceil(cols.stop * sx)),
            min(height_o, math.ceil(rows.stop * sy)),
        )
        peak = float(values[window][mask].max())
        regions.append(Region(box=box, area_px=area, peak_score=peak))
    regions.sort(key=lambda r: r.peak_score, reverse=True)
    return tuple(regions)


def heatmap_png(anomaly_map: torch.Tensor, threshold: float) -> str:
    """Base64 grey PNG of ``anomaly_map`` (H, W): the threshold maps to grey 128 and
    twice the threshold (or more) to white; with no threshold yet, the map's maximum is
    white."""
    values = anomaly_map.detach().to("cpu", torch.float32).numpy()
    scale = 128.0 / threshold if threshold > 0 and math.isfinite(threshold) else (
        255.0 / max(float(values.max()), 1e-12))
    pixels = np.clip(values * scale, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def event_message(event: Event, topic: str, capture_time_s: float) -> OutboundMessage:
    """The Kafka message of ``event``, keyed by camera so a camera's events stay ordered."""
    return OutboundMessage(
        topic=topic,
        key=event.camera.encode("utf-8"),
        value=event.model_dump_json().encode("utf-8"),
        headers=(("type", b"event"), ("content-type", EVENT_CONTENT_TYPE)),
        kind="event",
        capture_time_s=capture_time_s,
    )


def build_event(
    frame: Frame,
    *,
    score: float,
    threshold: float,
    anomaly_map: torch.Tensor,
    frames_learned: float,
    snapshot_version: int,
    scored_time_s: float,
    region_min_area_px: int,
    with_heatmap: bool,
) -> Event:
    """The event for ``frame`` scored ``score`` against ``threshold`` (NaN: unknown)."""
    known = not math.isnan(threshold)
    anomalous = known and score > threshold
    regions = (
        find_regions(anomaly_map, threshold, frame.original_size, min_area_px=region_min_area_px)
        if anomalous else ()
    )
    return Event(
        event_id=event_id(frame.topic, frame.partition, frame.offset),
        camera=frame.camera,
        source=Source(topic=frame.topic, partition=frame.partition, offset=frame.offset),
        capture_time=datetime.fromtimestamp(frame.capture_time_s, tz=UTC),
        scored_time=datetime.fromtimestamp(scored_time_s, tz=UTC),
        score=score,
        threshold=threshold if known else None,
        is_anomaly=anomalous,
        label=frame.label,
        image_size=frame.original_size,
        regions=regions,
        model=ModelInfo(frames_learned=frames_learned, snapshot_version=snapshot_version),
        heatmap_png=heatmap_png(anomaly_map, threshold) if with_heatmap else None,
    )


def dead_letter(record: InboundRecord, error: DecodeError, topic: str) -> OutboundMessage:
    """The dead-letter message for ``record``: its original key, value and headers,
    plus headers saying why and where it came from."""
    headers = record.headers + (
        ("error_reason", error.reason.encode("utf-8")),
        ("error_detail", error.detail[:512].encode("utf-8", errors="replace")),
        ("source_topic", record.topic.encode("utf-8")),
        ("source_partition", str(record.partition).encode("ascii")),
        ("source_offset", str(record.offset).encode("ascii")),
    )
    return OutboundMessage(
        topic=topic,
        key=record.key,
        value=record.value if record.value is not None else b"",
        headers=headers,
        kind="dead_letter",
        capture_time_s=None,
    )

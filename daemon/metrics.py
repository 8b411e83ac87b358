"""Every metric of docs/metrics.md, registered on an injected ``CollectorRegistry``.

Tests build a fresh registry per test; the service passes one registry to ``Metrics``
and to the HTTP server. Attribute names follow the metric names without the
``padimd_`` prefix and the ``_total`` suffix.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from daemon import __version__

# Mahalanobis image scores: a few units for normal patches, tens for clear defects.
SCORE_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0)
INFERENCE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """The daemon's metrics. Thread-safe (prometheus_client is), so the worker thread
    that runs the model can update them directly."""

    def __init__(
        self, registry: CollectorRegistry, *, backbone: str, version: str = __version__
    ) -> None:
        r = registry
        self.registry = registry
        self.frames_consumed = Counter(
            "padimd_frames_consumed", "Records read from input topics (valid key)",
            ["camera"], registry=r)
        self.frames_learned = Counter(
            "padimd_frames_learned", "Normal frames folded into the camera's model",
            ["camera"], registry=r)
        self.frames_scored = Counter(
            "padimd_frames_scored", "Frames scored", ["camera"], registry=r)
        self.frames_skipped = Counter(
            "padimd_frames_skipped", "Frames neither learned nor scored",
            ["camera", "reason"], registry=r)
        self.anomalies = Counter(
            "padimd_anomalies", "Frames whose score exceeded the threshold",
            ["camera"], registry=r)
        self.labelled_anomalous = Counter(
            "padimd_labelled_anomalous",
            "Operator-labelled anomalous frames, by whether they were detected",
            ["camera", "detected"], registry=r)
        self.decode_errors = Counter(
            "padimd_decode_errors", "Undecodable or invalid records", ["reason"], registry=r)
        self.dead_letters = Counter(
            "padimd_dead_letter", "Records written to the dead-letter topic", registry=r)
        self.anomaly_score = Histogram(
            "padimd_anomaly_score", "Image anomaly scores", ["camera"],
            buckets=SCORE_BUCKETS, registry=r)
        self.threshold = Gauge(
            "padimd_threshold", "Current decision threshold (NaN until known)",
            ["camera"], registry=r)
        self.inference_seconds = Histogram(
            "padimd_inference_seconds",
            "Wall time of one scoring batch (features + distances + maps)",
            buckets=INFERENCE_BUCKETS_S, registry=r)
        self.batch_size = Histogram(
            "padimd_batch_size", "Frames per scoring batch",
            buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.capture_to_event_seconds = Histogram(
            "padimd_capture_to_event_seconds",
            "Capture timestamp to event acknowledged by the broker",
            buckets=LATENCY_BUCKETS_S, registry=r)
        self.consumer_lag = Gauge(
            "padimd_consumer_lag",
            "High watermark minus committed/position offset, in records",
            ["topic", "partition"], registry=r)
        self.model_frames_learned = Gauge(
            "padimd_model_frames_learned",
            "Frames learned by the camera's model (weighted count)", ["camera"], registry=r)
        self.last_snapshot_timestamp_seconds = Gauge(
            "padimd_last_snapshot_timestamp_seconds",
            "Unix time of the last successful snapshot", registry=r)
        self.snapshot_failures = Counter(
            "padimd_snapshot_failures", "Snapshot writes that failed", registry=r)
        self.snapshot_fallbacks = Counter(
            "padimd_snapshot_fallbacks",
            "Corrupt snapshots skipped at restore (fell back to an older one)", registry=r)
        self.control_commands = Counter(
            "padimd_control_commands", "Operator commands", ["command", "result"], registry=r)
        self.assigned_partitions = Gauge(
            "padimd_assigned_partitions", "Partitions this instance owns", registry=r)
        self.build_info = Gauge(
            "padimd_build_info", "Build information", ["version", "backbone"], registry=r)
        self.build_info.labels(version=version, backbone=backbone).set(1)

    def register_camera(self, camera: str) -> None:
        """Create a camera's counters at zero when it is first seen: a series born at 1
        hides that first frame from rate() and increase(), and alerts read rates."""
        for counter in (self.frames_consumed, self.frames_learned, self.frames_scored,
                        self.anomalies):
            counter.labels(camera=camera)

    def forget_camera(self, camera: str) -> None:
        """Drop the per-camera gauges of a camera this instance no longer owns, so a
        moved camera is not reported by two instances. Counters stay (they are rates)."""
        for gauge in (self.threshold, self.model_frames_learned):
            try:
                gauge.remove(camera)
            except KeyError:
                pass  # never set on this instance

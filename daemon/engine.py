"""The engine: records in, events / dead letters / acks out, camera models in between.

Used by the Kafka edge (daemon/kafka.py) as documented in docs/daemon-design.md. Every
model operation and every change of camera state runs on one worker thread
(``ModelWorker``), in call order, so the event loop stays responsive and a checkpoint
never sees a half-processed batch. Bad input never raises: it becomes a dead letter.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from padim import FeatureExtractor, PaDiM, PadimError

from daemon.control import ControlError, ack_message, apply_command, error_ack, parse_command
from daemon.core import NEW_CAMERA, Action, CameraView, Decision, after, route
from daemon.events import build_event, dead_letter, event_message
from daemon.frames import DecodeError, Frame, FrameDecoder
from daemon.metrics import Metrics
from daemon.models import CameraKey, CameraState, ModelRegistry, ModelWorker, build_extractor
from daemon.records import InboundRecord, OutboundMessage, TopicPartition
from daemon.settings import Settings
from daemon.snapshots import CameraRecord, SnapshotError, SnapshotStore

log = logging.getLogger(__name__)

UNKNOWN_CAMERA = "unknown"  # metric label for records whose camera id is unusable


@dataclass(frozen=True, slots=True)
class _Planned:
    """A frame routed to the model, with its position in the extractor batch."""

    index: int
    frame: Frame
    key: CameraKey
    decision: Decision


class Engine:
    """Decode, route, learn/score, checkpoint. See docs/daemon-design.md."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        store: SnapshotStore,
        clock: Callable[[], float] = time.time,
        extractor: FeatureExtractor | None = None,
    ) -> None:
        """``extractor`` defaults to the one ``settings.model`` describes (tests pass a
        shared one to avoid building a backbone per test)."""
        self._settings = settings
        self._metrics = metrics
        self._store = store
        self._clock = clock
        self._decoder = FrameDecoder(settings.input, settings.model.size)
        self._registry = ModelRegistry(settings.model, settings.threshold,
                                       extractor or build_extractor(settings.model))
        self._worker = ModelWorker(settings.model.threads)
        self._assigned: set[TopicPartition] = set()
        self._processed: dict[TopicPartition, int] = {}  # next offset after the last processed
        self._durable: dict[TopicPartition, int] = {}  # processed offsets covered by snapshots
        self._assigned_once = False
        self._restoring = 0
        self._cameras_seen: set[str] = set()  # whose counters exist (metrics.register_camera)

    # ------------------------------------------------------------------ edge API

    def ready(self) -> bool:
        """True once an assignment has been restored (the extractor loads in __init__)."""
        return self._assigned_once and self._restoring == 0

    async def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Restore the cameras of newly assigned partitions from the snapshot store."""
        wanted = set(partitions)
        self._restoring += 1
        try:
            await self._worker.run(self._assign, wanted)
            self._assigned_once = True
        finally:
            self._restoring -= 1

    async def release(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Snapshot the cameras of ``partitions``, forget them and return the offsets
        that are safe to commit for them."""
        return await self._worker.run(self._release, set(partitions))

    async def process(self, records: Sequence[InboundRecord]) -> list[OutboundMessage]:
        """Handle one batch of input records; never raises on bad input."""
        if not records:
            return []
        return await self._worker.run(self._process, list(records))

    async def handle_control(self, record: InboundRecord) -> list[OutboundMessage]:
        """Apply one control-topic record and return its ack."""
        return await self._worker.run(self._control, record)

    async def checkpoint(self) -> dict[TopicPartition, int]:
        """Snapshot every dirty camera; return the per-partition offsets now durable
        (commit them only after the broker acknowledged every message returned so far)."""
        return await self._worker.run(self._checkpoint, None)

    def close(self) -> None:
        """Stop the worker thread (after the job in progress). Call once, at shutdown."""
        self._worker.close()

    # ------------------------------------------------------------------ assignment

    def _assign(self, partitions: set[TopicPartition]) -> None:
        for source in sorted(partitions - self._assigned):
            for camera in self._store.cameras(source):
                self._restore(CameraKey(source, camera))
            self._assigned.add(source)
        self._metrics.assigned_partitions.set(len(self._assigned))

    def _restore(self, key: CameraKey) -> None:
        extractor = self._registry.extractor
        result = self._store.restore(
            key.source, key.camera, extractor.identity,
            lambda data: PaDiM.from_bytes(data, extractor=extractor, source="snapshot"))
        if result.skipped:
            self._metrics.snapshot_fallbacks.inc(len(result.skipped))
        if result.restored is None:
            return
        meta = result.restored.meta
        model = result.restored.model
        # epsilon and half_life are not part of the features' identity: the configured
        # values apply to restored models too, so changing them needs no relearning.
        model.epsilon = self._settings.model.epsilon
        model.half_life = self._settings.model.half_life
        state = CameraState(
            key=key, model=model,
            threshold=self._registry.new_threshold(
                key.camera, override=meta.threshold_override, scores=meta.normal_scores),
            frames_learned=meta.frames_learned, frozen=meta.frozen,
            last_learned_offset=meta.last_learned_offset, snapshot_version=meta.seq)
        self._registry.add(state)
        self._update_gauges(state)
        log.info("camera %r (%s/%d): restored snapshot %d, %d frames learned",
                 key.camera, key.source.topic, key.source.partition, meta.seq,
                 meta.frames_learned)

    def _release(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        offsets = self._checkpoint(partitions)
        for state in self._registry.in_partitions(partitions):
            self._registry.remove(state.key)
            if not self._registry.by_camera(state.key.camera):
                self._metrics.forget_camera(state.key.camera)
        for source in partitions:
            self._assigned.discard(source)
            self._processed.pop(source, None)
            self._durable.pop(source, None)
        self._metrics.assigned_partitions.set(len(self._assigned))
        return offsets

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self, partitions: set[TopicPartition] | None) -> dict[TopicPartition, int]:
        targets = set(self._assigned) if partitions is None else partitions & self._assigned
        failed: set[TopicPartition] = set()
        for state in self._registry.in_partitions(targets):
            if not state.dirty:
                continue
            try:
                self._snapshot(state)
            except SnapshotError as exc:
                # Keep the partition's durable offset where it was: committing past
                # frames whose learning is not on disk would lose them on a crash.
                failed.add(state.key.source)
                self._metrics.snapshot_failures.inc()
                log.error("snapshot failed, offsets of %s/%d held back: %s",
                          state.key.source.topic, state.key.source.partition, exc)
        for source in targets - failed:
            if source in self._processed:
                self._durable[source] = self._processed[source]
        return {s: self._durable[s] for s in sorted(targets) if s in self._durable}

    def _snapshot(self, state: CameraState) -> None:
        record = CameraRecord(
            frames_learned=state.frames_learned, frozen=state.frozen,
            threshold_override=state.threshold.override,
            last_learned_offset=state.last_learned_offset,
            normal_scores=state.threshold.normal_scores)
        now = self._clock()
        state.snapshot_version = self._store.save(
            state.key.source, state.key.camera, state.model.to_bytes(), record,
            self._registry.extractor.identity, now)
        state.dirty = False
        self._metrics.last_snapshot_timestamp_seconds.set(now)

    # ------------------------------------------------------------------ control

    def _control(self, record: InboundRecord) -> list[OutboundMessage]:
        parsed = parse_command(record.value)
        if isinstance(parsed, ControlError):
            ack = error_ack(parsed)
            self._metrics.control_commands.labels(command="invalid", result="error").inc()
            log.warning("control record %s:%d:%d refused: %s",
                        record.topic, record.partition, record.offset, parsed.detail)
        else:
            ack = apply_command(parsed, self._registry)
            self._metrics.control_commands.labels(command=parsed.command, result=ack.status).inc()
            log.info("control %s camera=%r request_id=%r: %s", parsed.command, parsed.camera,
                     parsed.request_id, ack.status)
            for state in self._registry.by_camera(parsed.camera):
                self._update_gauges(state)
        return [ack_message(ack, self._settings.kafka.output_topic)]

    # ------------------------------------------------------------------ processing

    def _process(self, records: list[InboundRecord]) -> list[OutboundMessage]:
        out: list[OutboundMessage] = []
        frames: list[Frame] = []
        advanced: dict[TopicPartition, int] = {}
        for record in records:
            source = record.topic_partition
            camera = self._decoder.camera_of(record)
            camera_label = camera if isinstance(camera, str) else UNKNOWN_CAMERA
            if source not in self._assigned:
                # Fetched before a rebalance took the partition away: its new owner
                # handles it; producing anything here would duplicate that.
                self._metrics.frames_skipped.labels(camera=camera_label, reason="not_owned").inc()
                continue
            advanced[source] = max(advanced.get(source, 0), record.offset + 1)
            if isinstance(camera, str):
                if camera not in self._cameras_seen:
                    self._cameras_seen.add(camera)
                    self._metrics.register_camera(camera)
                self._metrics.frames_consumed.labels(camera=camera).inc()
            result = self._decoder.decode(record)
            if isinstance(result, DecodeError):
                out.append(self._dead_letter(record, result))
            else:
                frames.append(result)
        batch = self._settings.scoring.max_batch_size
        for start in range(0, len(frames), batch):
            out.extend(self._run_batch(frames[start:start + batch]))
        for source, offset in advanced.items():
            self._processed[source] = max(self._processed.get(source, 0), offset)
        return out

    def _dead_letter(self, record: InboundRecord, error: DecodeError) -> OutboundMessage:
        self._metrics.decode_errors.labels(reason=error.reason).inc()
        self._metrics.dead_letters.inc()
        log.debug("dead letter %s:%d:%d %s: %s", record.topic, record.partition, record.offset,
                  error.reason, error.detail)
        return dead_letter(record, error, self._settings.kafka.dead_letter_topic)

    def _plan(self, frames: list[Frame]) -> list[_Planned]:
        """Route every frame in order, projecting each camera's state forward so a
        camera that becomes fitted mid-batch starts scoring at the right frame."""
        model = self._settings.model
        views: dict[CameraKey, CameraView] = {}
        planned: list[_Planned] = []
        for frame in frames:
            key = CameraKey(TopicPartition(frame.topic, frame.partition), frame.camera)
            view = views.get(key)
            if view is None:
                state = self._registry.get(key)
                view = state.view() if state is not None else NEW_CAMERA
            decision = route(frame.label, frame.offset, view,
                             min_frames_before_scoring=model.min_frames_before_scoring,
                             unlabelled_as_normal=self._settings.input.unlabelled_as_normal)
            views[key] = after(view, decision, frame.offset)
            if decision.action is Action.SKIP:
                assert decision.skip_reason is not None
                self._metrics.frames_skipped.labels(
                    camera=frame.camera, reason=decision.skip_reason).inc()
                continue
            planned.append(_Planned(len(planned), frame, key, decision))
        return planned

    def _run_batch(self, frames: list[Frame]) -> list[OutboundMessage]:
        planned = self._plan(frames)
        if not planned:
            return []
        started = time.perf_counter()
        images = torch.stack([p.frame.image for p in planned])  # (B, 3, H, W)
        embeddings = self._registry.extractor(images)  # (B, d, h, w): one forward for all
        out: list[OutboundMessage] = []
        by_camera: dict[CameraKey, list[_Planned]] = {}
        for item in planned:
            by_camera.setdefault(item.key, []).append(item)
        for key, items in by_camera.items():
            state = self._registry.get_or_create(key)
            for run in _runs(items):
                try:
                    out.extend(self._run_camera(state, run, embeddings))
                except PadimError:
                    # A numerical failure of one camera's model (e.g. a covariance that
                    # cannot be factorised) must not stop the other cameras or the
                    # service; these frames are neither learned nor scored.
                    log.exception("camera %r: model failed on offsets %d..%d of %s/%d",
                                  key.camera, run[0].frame.offset, run[-1].frame.offset,
                                  key.source.topic, key.source.partition)
            self._update_gauges(state)
        self._metrics.inference_seconds.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(len(planned))
        return out

    def _run_camera(
        self, state: CameraState, run: list[_Planned], embeddings: torch.Tensor
    ) -> list[OutboundMessage]:
        """One camera's consecutive frames with the same decision: score first (held
        out), then learn."""
        decision = run[0].decision
        index = torch.tensor([p.index for p in run], device=embeddings.device)
        selected = embeddings.index_select(0, index)  # (n, d, h, w)
        out: list[OutboundMessage] = []
        if decision.scores:
            scores, maps = state.model.score_embeddings(selected)  # (n,), (n, H, W)
            for item, score, anomaly_map in zip(run, scores.tolist(), maps, strict=True):
                message = self._scored(state, item, float(score), anomaly_map)
                if message is not None:
                    out.append(message)
        if decision.learns:
            state.model.train_embeddings(selected)
            state.frames_learned += len(run)
            state.last_learned_offset = run[-1].frame.offset
            state.dirty = True
            self._metrics.frames_learned.labels(camera=state.key.camera).inc(len(run))
        return out

    def _scored(
        self, state: CameraState, item: _Planned, score: float, anomaly_map: torch.Tensor
    ) -> OutboundMessage | None:
        frame, camera = item.frame, state.key.camera
        threshold = state.threshold.value()  # decided before this score can move it
        anomalous = state.threshold.is_anomaly(score)
        self._metrics.frames_scored.labels(camera=camera).inc()
        if math.isfinite(score):
            self._metrics.anomaly_score.labels(camera=camera).observe(score)
        if anomalous:
            self._metrics.anomalies.labels(camera=camera).inc()
        if frame.label == "anomalous":
            self._metrics.labelled_anomalous.labels(
                camera=camera, detected="true" if anomalous else "false").inc()
        if item.decision.threshold_sample:
            state.threshold.observe_normal(score)
            state.dirty = True
        if not (anomalous or self._settings.scoring.emit_all_frames):
            return None
        scoring = self._settings.scoring
        event = build_event(
            frame, score=score, threshold=threshold, anomaly_map=anomaly_map,
            frames_learned=state.model.num_trained, snapshot_version=state.snapshot_version,
            scored_time_s=self._clock(), region_min_area_px=scoring.region_min_area_px,
            with_heatmap=scoring.heatmaps)
        return event_message(event, self._settings.kafka.output_topic, frame.capture_time_s)

    def _update_gauges(self, state: CameraState) -> None:
        camera = state.key.camera
        self._metrics.threshold.labels(camera=camera).set(state.threshold.value())
        self._metrics.model_frames_learned.labels(camera=camera).set(state.model.num_trained)


def _runs(items: list[_Planned]) -> list[list[_Planned]]:
    """Split one camera's frames into maximal runs with the same decision."""
    runs: list[list[_Planned]] = []
    for item in items:
        if runs and runs[-1][0].decision == item.decision:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs

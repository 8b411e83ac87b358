"""Camera snapshots: the only place model state touches disk.

Layout (docs/daemon-design.md)::

    <dir>/<topic>/<partition>/<camera-id-escaped>/<seq>.padim   model (PaDiM.to_bytes)
    <dir>/<topic>/<partition>/<camera-id-escaped>/<seq>.json    sidecar (SnapshotMeta)

The model is written first, then the sidecar; both atomically (temp file, fsync,
rename, fsync directory). The sidecar is the commit marker: a snapshot without one does
not exist. It carries the model's SHA-256, so a damaged model file is detected before it
is parsed, and the extractor identity, so a snapshot made with another backbone, size or
channel subset is refused rather than loaded. Restore walks from the newest snapshot to
older ones and reports each one it had to skip. The newest ``retention`` are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, ValidationError

from padim.persist import write_atomic

from daemon.records import TopicPartition
from daemon.settings import SnapshotSettings

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
MODEL_SUFFIX = ".padim"
META_SUFFIX = ".json"
_SEQ_NAME = re.compile(r"^(\d{1,18})\.(padim|json)$")
# padim.persist.write_atomic names its temporary files ".<target name>.<random>.tmp".
_TMP_GLOB = ".*.tmp"

T = TypeVar("T")


class SnapshotError(OSError):
    """A snapshot could not be written (disk full, permissions, ...)."""


class CameraRecord(BaseModel):
    """The camera state saved beside its model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frames_learned: int
    frozen: bool
    threshold_override: float | None
    last_learned_offset: int | None  # in the snapshot's partition
    normal_scores: tuple[float, ...]  # held-out scores behind the learned threshold


class SnapshotMeta(CameraRecord):
    """The sidecar: camera state plus what is needed to trust the model file."""

    format: int
    camera: str
    topic: str
    partition: int
    seq: int
    created_time_s: float
    model_sha256: str
    model_size_bytes: int
    identity: dict[str, Any]  # padim FeatureExtractor.identity the model was made with


@dataclass(frozen=True, slots=True)
class Restored(Generic[T]):
    """A restored camera: its sidecar and its loaded model."""

    meta: SnapshotMeta
    model: T


@dataclass(frozen=True, slots=True)
class RestoreResult(Generic[T]):
    """The newest usable snapshot (None: start fresh) and why newer ones were skipped."""

    restored: Restored[T] | None
    skipped: tuple[str, ...]


def escape_name(name: str) -> str:
    """A file-system-safe, reversible directory name for a camera id or topic."""
    # quote() leaves '.' alone; '.' and '..' must never become directory names.
    return quote(name, safe="").replace(".", "%2E")


def unescape_name(name: str) -> str:
    """Inverse of ``escape_name``."""
    return unquote(name)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class SnapshotStore:
    """Reads and writes camera snapshots under one directory."""

    def __init__(self, directory: Path, retention: int) -> None:
        if retention < 1:
            raise ValueError(f"retention must be >= 1, got {retention}")
        self.directory = Path(directory)
        self.retention = retention

    @classmethod
    def from_settings(cls, settings: SnapshotSettings) -> SnapshotStore:
        """The store configured by the ``snapshots`` section."""
        return cls(settings.dir, settings.retention)

    def camera_dir(self, source: TopicPartition, camera: str) -> Path:
        """The directory of ``camera``'s snapshots for partition ``source``."""
        return (self.directory / escape_name(source.topic) / str(source.partition)
                / escape_name(camera))

    def cameras(self, source: TopicPartition) -> list[str]:
        """Camera ids with a snapshot directory under ``source``."""
        base = self.directory / escape_name(source.topic) / str(source.partition)
        if not base.is_dir():
            return []
        return sorted(unescape_name(p.name) for p in base.iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    def save(
        self,
        source: TopicPartition,
        camera: str,
        model_bytes: bytes,
        record: CameraRecord,
        identity: dict[str, Any],
        now_s: float,
    ) -> int:
        """Write a new snapshot and prune old ones; returns its sequence number.

        Raises SnapshotError when the disk refuses; the previous snapshots stay intact."""
        directory = self.camera_dir(source, camera)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            _remove_temporaries(directory)
            seq = max(_sequences(directory, MODEL_SUFFIX) | _sequences(directory, META_SUFFIX),
                      default=0) + 1
            meta = SnapshotMeta(
                **record.model_dump(), format=SNAPSHOT_FORMAT, camera=camera,
                topic=source.topic, partition=source.partition, seq=seq,
                created_time_s=now_s, model_sha256=hashlib.sha256(model_bytes).hexdigest(),
                model_size_bytes=len(model_bytes), identity=json.loads(_canonical(identity)))
            write_atomic(directory / f"{seq}{MODEL_SUFFIX}", model_bytes)
            # The sidecar last: it is what makes the snapshot exist.
            write_atomic(directory / f"{seq}{META_SUFFIX}",
                          meta.model_dump_json(indent=1).encode("utf-8"))
            self._prune(directory, seq)
        except OSError as exc:
            raise SnapshotError(f"cannot write snapshot of camera {camera!r} in {directory}: "
                                f"{exc.strerror or exc}") from exc
        return seq

    def restore(
        self,
        source: TopicPartition,
        camera: str,
        identity: dict[str, Any],
        load: Callable[[bytes], T],
    ) -> RestoreResult[T]:
        """The newest snapshot that is intact, ours and made with ``identity``.

        ``load`` turns model bytes into a model and raises on anything it cannot use;
        such a snapshot is skipped like a corrupt one."""
        directory = self.camera_dir(source, camera)
        skipped: list[str] = []
        expected_identity = _canonical(json.loads(_canonical(identity)))
        for seq in sorted(_sequences(directory, META_SUFFIX), reverse=True):
            problem, result = self._try_one(directory, seq, source, camera, expected_identity, load)
            if result is not None:
                if skipped:
                    log.warning("camera %r (%s/%d): restored older snapshot %d after skipping %d",
                                camera, source.topic, source.partition, seq, len(skipped))
                return RestoreResult(result, tuple(skipped))
            log.warning("camera %r (%s/%d): snapshot %d refused: %s",
                        camera, source.topic, source.partition, seq, problem)
            skipped.append(f"{seq}: {problem}")
        if skipped:
            log.error("camera %r (%s/%d): no usable snapshot (%d refused); starting fresh",
                      camera, source.topic, source.partition, len(skipped))
        return RestoreResult(None, tuple(skipped))

    def _try_one(
        self,
        directory: Path,
        seq: int,
        source: TopicPartition,
        camera: str,
        expected_identity: str,
        load: Callable[[bytes], T],
    ) -> tuple[str, Restored[T] | None]:
        try:
            meta = SnapshotMeta.model_validate_json((directory / f"{seq}{META_SUFFIX}").read_bytes())
        except (OSError, ValidationError, ValueError) as exc:
            return f"sidecar unreadable: {str(exc).splitlines()[0]}", None
        if meta.format != SNAPSHOT_FORMAT:
            return f"snapshot format {meta.format}, this daemon reads {SNAPSHOT_FORMAT}", None
        if (meta.camera, meta.topic, meta.partition) != (camera, source.topic, source.partition):
            return (f"sidecar belongs to camera {meta.camera!r} on "
                    f"{meta.topic}/{meta.partition}"), None
        if _canonical(meta.identity) != expected_identity:
            differing = sorted(k for k in set(meta.identity) | set(json.loads(expected_identity))
                               if meta.identity.get(k) != json.loads(expected_identity).get(k))
            return (f"foreign model: made with another feature configuration "
                    f"(differs in {', '.join(differing)}); not loaded"), None
        try:
            data = (directory / f"{seq}{MODEL_SUFFIX}").read_bytes()
        except OSError as exc:
            return f"model file unreadable: {exc.strerror or exc}", None
        if len(data) != meta.model_size_bytes or hashlib.sha256(data).hexdigest() != meta.model_sha256:
            return "model file does not match the checksum in its sidecar (corrupt)", None
        try:
            model = load(data)
        except Exception as exc:  # noqa: BLE001 - any refusal by the loader means "skip it"
            return f"model refused by the loader: {type(exc).__name__}: {exc}", None
        return "", Restored(meta, model)

    def _prune(self, directory: Path, newest: int) -> None:
        complete = sorted(_sequences(directory, META_SUFFIX), reverse=True)
        for seq in complete[self.retention:]:
            # Sidecar first: a snapshot half-deleted by a crash is then simply absent.
            (directory / f"{seq}{META_SUFFIX}").unlink(missing_ok=True)
            (directory / f"{seq}{MODEL_SUFFIX}").unlink(missing_ok=True)
        for seq in _sequences(directory, MODEL_SUFFIX) - set(complete[: self.retention]):
            if seq < newest:  # model files whose sidecar was never written
                (directory / f"{seq}{MODEL_SUFFIX}").unlink(missing_ok=True)


def _sequences(directory: Path, suffix: str) -> set[int]:
    if not directory.is_dir():
        return set()
    found: set[int] = set()
    for path in directory.iterdir():
        match = _SEQ_NAME.match(path.name)
        if match and path.name.endswith(suffix):
            found.add(int(match.group(1)))
    return found


def _remove_temporaries(directory: Path) -> None:
    # Left by a crash mid-write; this instance is the camera's only writer.
    for path in directory.glob(_TMP_GLOB):
        path.unlink(missing_ok=True)

"""daemon.snapshots: atomic, checksummed snapshots with retention and safe fallback."""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path

import pytest
import torch
from padim import FeatureExtractor, PaDiM

from daemon.records import TopicPartition
from daemon.snapshots import (
    CameraRecord,
    SnapshotError,
    SnapshotStore,
    escape_name,
    unescape_name,
)
from tests.daemon.engine_support import MODEL_SIZE

SOURCE = TopicPartition("camera-frames", 4)
CAMERA = "dock/7 ../x"  # slashes and dots must not escape the camera's directory


def record(frames: int = 3, **changes: object) -> CameraRecord:
    values: dict[str, object] = {"frames_learned": frames, "frozen": False,
                                 "threshold_override": None, "last_learned_offset": 41,
                                 "normal_scores": (1.0, 2.5)}
    values.update(changes)
    return CameraRecord(**values)  # type: ignore[arg-type]


_EMBEDDINGS: weakref.WeakKeyDictionary[FeatureExtractor, torch.Tensor] = (
    weakref.WeakKeyDictionary())


def trained(extractor: FeatureExtractor, images: int) -> PaDiM:
    """A model that learned ``images`` random images (features computed once per
    extractor: the backbone forward is the slow part on a shared machine)."""
    if extractor not in _EMBEDDINGS:
        pixels = torch.rand(3, 3, *MODEL_SIZE, generator=torch.Generator().manual_seed(0))
        _EMBEDDINGS[extractor] = extractor(pixels)
    model = PaDiM(extractor=extractor)
    model.train_embeddings(_EMBEDDINGS[extractor][:images])
    return model


def loader(extractor: FeatureExtractor):  # noqa: ANN201 - a closure for restore()
    return lambda data: PaDiM.from_bytes(data, extractor=extractor)


def save(store: SnapshotStore, model: PaDiM, extractor: FeatureExtractor, **changes: object) -> int:
    return store.save(SOURCE, CAMERA, model.to_bytes(), record(**changes), extractor.identity,
                      now_s=1_700_000_000.0)


def test_round_trip_restores_model_and_camera_state(tmp_path: Path,
                                                    tiny_extractor: FeatureExtractor) -> None:
    store = SnapshotStore(tmp_path, retention=3)
    model = trained(tiny_extractor, 3)
    seq = save(store, model, tiny_extractor, frozen=True, threshold_override=7.0)
    result = store.restore(SOURCE, CAMERA, tiny_extractor.identity, loader(tiny_extractor))
    assert result.skipped == () and result.restored is not None
    meta, restored = result.restored.meta, result.restored.model
    assert (meta.seq, meta.frozen, meta.threshold_override, meta.last_learned_offset) == (
        seq, True, 7.0, 41)
    assert meta.normal_scores == (1.0, 2.5)
    probe = _EMBEDDINGS[tiny_extractor]
    assert torch.equal(restored.score_embeddings(probe)[0], model.score_embeddings(probe)[0])


def test_cameras_lists_the_partitions_cameras(tmp_path: Path,
                                               tiny_extractor: FeatureExtractor) -> None:
    store = SnapshotStore(tmp_path, retention=1)
    save(store, trained(tiny_extractor, 2), tiny_extractor)
    assert store.cameras(SOURCE) == [CAMERA]
    assert store.cameras(TopicPartition("camera-frames", 5)) == []
    assert store.camera_dir(SOURCE, CAMERA).is_relative_to(tmp_path / "camera-frames" / "4")


@pytest.mark.parametrize("name", ["..", ".", "a/b", "cam 1", "kamera-ü", "%2E"])
def test_escaped_names_are_single_safe_components(name: str) -> None:
    escaped = escape_name(name)
    assert "/" not in escaped and escaped not in (".", "..")
    assert unescape_name(escaped) == name


def test_retention_keeps_the_newest(tmp_path: Path, tiny_extractor: FeatureExtractor) -> None:
    store = SnapshotStore(tmp_path, retention=2)
    model = trained(tiny_extractor, 2)
    seqs = [save(store, model, tiny_extractor) for _ in range(4)]
    assert seqs == [1, 2, 3, 4]
    names = sorted(p.name for p in store.camera_dir(SOURCE, CAMERA).iterdir())
    assert names == ["3.json", "3.padim", "4.json", "4.padim"]


def test_corrupt_newest_falls_back_to_previous(tmp_path: Path,
                                               tiny_extractor: FeatureExtractor) -> None:
    store = SnapshotStore(tmp_path, retention=3)
    save(store, trained(tiny_extractor, 2), tiny_extractor, frames=2)
    newest = save(store, trained(tiny_extractor, 3), tiny_extractor, frames=3)
    path = store.camera_dir(SOURCE, CAMERA) / f"{newest}.padim"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = store.restore(SOURCE, CAMERA, tiny_extractor.identity, loader(tiny_extractor))
    assert result.restored is not None and result.restored.meta.frames_learned == 2
    assert len(result.skipped) == 1 and "checksum" in result.skipped[0]


@pytest.mark.parametrize("damage", ["truncate_model", "garbage_sidecar", "delete_model"])
def test_damaged_newest_falls_back(tmp_path: Path, tiny_extractor: FeatureExtractor,
                                   damage: str) -> None:
    store = SnapshotStore(tmp_path, retention=3)
    save(store, trained(tiny_extractor, 2), tiny_extractor, frames=2)
    newest = save(store, trained(tiny_extractor, 3), tiny_extractor, frames=3)
    directory = store.camera_dir(SOURCE, CAMERA)
    if damage == "truncate_model":
        os.truncate(directory / f"{newest}.padim", 100)
    elif damage == "garbage_sidecar":
        (directory / f"{newest}.json").write_bytes(b"\x00\x01 not json")
    else:
        (directory / f"{newest}.padim").unlink()
    result = store.restore(SOURCE, CAMERA, tiny_extractor.identity, loader(tiny_extractor))
    assert result.restored is not None and result.restored.meta.frames_learned == 2
    assert len(result.skipped) == 1


def test_foreign_snapshot_is_refused_not_loaded(tmp_path: Path,
                                                tiny_extractor: FeatureExtractor) -> None:
    other = FeatureExtractor(weights="none", size=MODEL_SIZE, num_embeddings=16, seed=99)
    store = SnapshotStore(tmp_path, retention=3)
    save(store, trained(other, 2), other)
    loads: list[bytes] = []

    def must_not_load(data: bytes) -> PaDiM:
        loads.append(data)
        raise AssertionError("a foreign snapshot reached the loader")

    result = store.restore(SOURCE, CAMERA, tiny_extractor.identity, must_not_load)
    assert result.restored is None and loads == []
    assert "foreign model" in result.skipped[0] and "channel_indices" in result.skipped[0]


def test_loader_refusal_falls_back(tmp_path: Path, tiny_extractor: FeatureExtractor) -> None:
    store = SnapshotStore(tmp_path, retention=3)
    save(store, trained(tiny_extractor, 2), tiny_extractor, frames=2)
    save(store, trained(tiny_extractor, 3), tiny_extractor, frames=3)
    calls = []

    def refuse_first(data: bytes) -> PaDiM:
        calls.append(len(data))
        if len(calls) == 1:
            raise ValueError("not today")
        return PaDiM.from_bytes(data, extractor=tiny_extractor)

    result = store.restore(SOURCE, CAMERA, tiny_extractor.identity, refuse_first)
    assert result.restored is not None and result.restored.meta.frames_learned == 2
    assert "not today" in result.skipped[0]


def test_sidecar_of_another_camera_is_refused(tmp_path: Path,
                                              tiny_extractor: FeatureExtractor) -> None:
    store = SnapshotStore(tmp_path, retention=3)
    seq = save(store, trained(tiny_extractor, 2), tiny_extractor)
    sidecar = store.camera_dir(SOURCE, CAMERA) / f"{seq}.json"
    meta = json.loads(sidecar.read_text())
    meta["camera"] = "someone-else"
    sidecar.write_text(json.dumps(meta))
    result = store.restore(SOURCE, CAMERA, tiny_extractor.identity, loader(tiny_extractor))
    assert result.restored is None and "someone-else" in result.skipped[0]


def test_model_without_sidecar_does_not_exist(tmp_path: Path,
                                              tiny_extractor: FeatureExtractor) -> None:
    store = SnapshotStore(tmp_path, retention=3)
    save(store, trained(tiny_extractor, 2), tiny_extractor, frames=2)
    # A crash between the model file and its sidecar leaves an orphan model file.
    (store.camera_dir(SOURCE, CAMERA) / "2.padim").write_bytes(b"half written")
    result = store.restore(SOURCE, CAMERA, tiny_extractor.identity, loader(tiny_extractor))
    assert result.restored is not None and result.restored.meta.seq == 1
    assert result.skipped == ()
    assert save(store, trained(tiny_extractor, 2), tiny_extractor) == 3


def test_no_snapshot_means_start_fresh(tmp_path: Path, tiny_extractor: FeatureExtractor) -> None:
    result = SnapshotStore(tmp_path, 1).restore(SOURCE, CAMERA, tiny_extractor.identity,
                                                loader(tiny_extractor))
    assert result.restored is None and result.skipped == ()


def test_unwritable_directory_raises_snapshot_error(tmp_path: Path,
                                                    tiny_extractor: FeatureExtractor) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the snapshot directory should be")
    store = SnapshotStore(blocker, retention=1)
    with pytest.raises(SnapshotError, match="cannot write snapshot"):
        save(store, trained(tiny_extractor, 2), tiny_extractor)

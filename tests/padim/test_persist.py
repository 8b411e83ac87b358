"""Model files: complete, pickle-free, verified, atomic."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from padim import FeatureExtractor, IncompatibleModelError, PaDiM, PersistError
from padim.persist import FORMAT_VERSION, decode, encode, write_atomic
from tests.padim.support import random_images


@pytest.fixture
def trained(small_model: PaDiM) -> PaDiM:
    small_model.train_one_batch(random_images(6, seed=0))
    return small_model


def test_file_records_everything_needed_to_resume(trained: PaDiM, tmp_path: Path) -> None:
    path = tmp_path / "model.padim"
    trained.save(path)
    record = decode(path.read_bytes())
    assert record.variant == "padim"
    assert record.format_version == FORMAT_VERSION
    extractor = record.config["extractor"]
    assert extractor["backbone"] == "resnet18"
    assert extractor["weights_id"] == "none"
    assert extractor["size"] == [64, 64]
    assert extractor["identity"]["channel_indices"] == trained.extractor.channel_indices.tolist()
    assert record.config["model"]["epsilon"] == trained.epsilon
    assert float(record.tensors["model.stats.count"][0]) == 6


def test_loaded_model_remembers_the_library_version_that_wrote_it(trained: PaDiM) -> None:
    import padim

    assert trained.saved_library_version is None
    assert PaDiM.from_bytes(trained.to_bytes()).saved_library_version == padim.__version__


def test_flipped_byte_in_the_payload_is_detected(trained: PaDiM, tmp_path: Path) -> None:
    data = bytearray(trained.to_bytes())
    data[-100] ^= 0xFF
    with pytest.raises(PersistError, match="checksum"):
        PaDiM.from_bytes(bytes(data))


@pytest.mark.parametrize("length", [0, 5, 200])
def test_truncated_file_is_refused(trained: PaDiM, tmp_path: Path, length: int) -> None:
    path = tmp_path / "cut.padim"
    path.write_bytes(trained.to_bytes()[:length])
    with pytest.raises(PersistError):
        PaDiM.load(path)


def test_pickle_payload_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # noqa: ANN204 - the classic pickle gadget
            return (marker.write_text, ("executed",))

    path = tmp_path / "evil.padim"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(PersistError):
        PaDiM.load(path)
    assert not marker.exists()


def test_safetensors_file_from_elsewhere_is_refused() -> None:
    foreign = st_save({"weight": torch.zeros(3)}, metadata={"format": "pt"})
    with pytest.raises(PersistError, match="not a padim model"):
        PaDiM.from_bytes(foreign)


def test_newer_format_version_is_refused(trained: PaDiM) -> None:
    record = decode(trained.to_bytes())
    data = encode("padim", record.config, record.tensors)
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    header["__metadata__"]["format_version"] = str(FORMAT_VERSION + 1)
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    bumped = len(new_header).to_bytes(8, "little") + new_header + data[8 + header_len :]
    with pytest.raises(PersistError, match="upgrade"):
        PaDiM.from_bytes(bumped)


def test_model_for_another_configuration_is_refused_by_a_shared_extractor(trained: PaDiM) -> None:
    other = FeatureExtractor(backbone="resnet18", weights="none", size=(96, 96), num_embeddings=32, seed=0)
    with pytest.raises(IncompatibleModelError, match="size"):
        PaDiM.from_bytes(trained.to_bytes(), extractor=other)


def test_other_channel_subset_is_refused(trained: PaDiM) -> None:
    other = FeatureExtractor(backbone="resnet18", weights="none", size=(64, 64), num_embeddings=32, seed=1)
    with pytest.raises(IncompatibleModelError, match="channel_indices"):
        PaDiM.from_bytes(trained.to_bytes(), extractor=other)


def test_loading_into_a_shared_extractor_reuses_it(trained: PaDiM) -> None:
    loaded = PaDiM.from_bytes(trained.to_bytes(), extractor=trained.extractor)
    assert loaded.extractor is trained.extractor
    probe = random_images(2, seed=5)
    torch.testing.assert_close(loaded.predict(probe), trained.predict(probe))


def test_missing_file_is_a_persist_error(tmp_path: Path) -> None:
    with pytest.raises(PersistError, match="cannot read"):
        PaDiM.load(tmp_path / "absent.padim")


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.bin"
    write_atomic(target, b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "file.bin"
    write_atomic(target, b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("padim.persist.os.replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]

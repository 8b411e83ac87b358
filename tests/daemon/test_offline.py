"""The offline commands in-process (daemon/offline.py): image discovery, fit, score, info.

End-to-end runs of the real `padimd` console script are in test_cli.py; these tests call
the functions (or `daemon.cli.main`) directly, which is faster and lets them hand in
streams that claim to be a terminal.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

import padim

from daemon import offline
from daemon.cli import FIT_DEFAULTS, CliError, main
from daemon.offline import ImageSource, UnreadableImage
from tests.daemon.image_files import FAST_FIT_ARGS, write_images, write_not_an_image

NUM_TRAIN = 4


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, as an interactive shell's is."""

    def isatty(self) -> bool:
        return True


def _fit(images_dir: Path, out: Path, stderr: io.StringIO, **overrides: object) -> int:
    """offline.fit with the fast test settings; `overrides` replace keyword arguments."""
    kwargs: dict[str, object] = dict(
        options={**dict.fromkeys(FIT_DEFAULTS), "weights": "none", "size": (64, 64)},
        defaults=FIT_DEFAULTS, batch_size=2, resume=False, overwrite=False,
        device="cpu", quiet=False, stderr=stderr,
    )
    kwargs.update(overrides)
    return offline.fit(images_dir, out, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """(model file, its training images): one fit shared by the read-only tests."""
    root = tmp_path_factory.mktemp("fitted")
    images = write_images(root / "train", NUM_TRAIN)
    model = root / "model.padim"
    assert main(["fit", str(root / "train"), "--out", str(model), "--quiet", *FAST_FIT_ARGS]) == 0
    return model, images


def _score_rows(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    assert main(["score", *args, "--format", "jsonl"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# ----------------------------------------------------------------------------- discovery


def test_find_images_recurses_matches_suffixes_case_insensitively_and_sorts(tmp_path: Path) -> None:
    write_images(tmp_path / "b", 1, prefix="x")
    write_images(tmp_path / "a" / "deep", 1, prefix="y", suffix=".JPG")
    (tmp_path / "notes.txt").write_text("not an image")
    found = offline.find_images(tmp_path)
    assert found == [tmp_path / "a" / "deep" / "y0.JPG", tmp_path / "b" / "x0.png"]


def test_expand_inputs_marks_named_files_explicit_and_directory_images_not(tmp_path: Path) -> None:
    named = write_images(tmp_path, 1, prefix="named")[0]
    write_images(tmp_path / "dir", 2)
    sources = offline.expand_inputs([named, tmp_path / "dir"])
    assert [(s.path.name, s.explicit) for s in sources] == [
        ("named0.png", True), ("img0.png", False), ("img1.png", False),
    ]


def test_expand_inputs_rejects_a_missing_path_by_name(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="no such file or directory: .*missing.png"):
        offline.expand_inputs([tmp_path / "missing.png"])


def test_expand_inputs_rejects_a_directory_without_images(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing to see")
    with pytest.raises(CliError, match="no images"):
        offline.expand_inputs([tmp_path])


def test_open_image_rejects_a_text_file(tmp_path: Path) -> None:
    with pytest.raises(UnreadableImage, match="fake.png"):
        offline.open_image(write_not_an_image(tmp_path / "fake.png"))


def test_open_image_rejects_a_truncated_png(tmp_path: Path) -> None:
    path = write_images(tmp_path, 1)[0]
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UnreadableImage):
        offline.open_image(path)


def test_heatmap_path_mirrors_the_subdirectory_below_the_argument(tmp_path: Path) -> None:
    source = ImageSource(Path("data/good/x.png"), False, Path("good/x.png"))
    assert offline.heatmap_path(tmp_path, source, set()) == tmp_path / "good" / "x.heatmap.png"


def test_heatmap_path_numbers_a_name_already_taken_in_this_run(tmp_path: Path) -> None:
    taken: set[Path] = set()
    first = offline.heatmap_path(tmp_path, ImageSource(Path("x.png"), True, Path("x.png")), taken)
    second = offline.heatmap_path(tmp_path, ImageSource(Path("x.jpg"), True, Path("x.jpg")), taken)
    assert (first.name, second.name) == ("x.heatmap.png", "x-1.heatmap.png")


# ----------------------------------------------------------------------------- fit


def test_fit_draws_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    write_images(tmp_path / "train", 2)
    stderr = _Terminal()
    assert _fit(tmp_path / "train", tmp_path / "m.padim", stderr) == 0
    assert "2/2" in stderr.getvalue()  # tqdm's n/total counter


def test_fit_draws_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    write_images(tmp_path / "train", 2)
    stderr = io.StringIO()
    assert _fit(tmp_path / "train", tmp_path / "m.padim", stderr) == 0
    assert "2/2" not in stderr.getvalue()
    assert "learned 2 images" in stderr.getvalue()


def test_fit_quiet_writes_nothing_to_a_terminal(tmp_path: Path) -> None:
    write_images(tmp_path / "train", 2)
    stderr = _Terminal()
    assert _fit(tmp_path / "train", tmp_path / "m.padim", stderr, quiet=True) == 0
    assert stderr.getvalue() == ""


def test_fit_skips_unreadable_images_in_the_directory_and_counts_them(tmp_path: Path) -> None:
    write_images(tmp_path / "train", 2)
    write_not_an_image(tmp_path / "train" / "broken.jpg")
    stderr = io.StringIO()
    assert _fit(tmp_path / "train", tmp_path / "m.padim", stderr) == 0
    assert "broken.jpg" in stderr.getvalue()
    assert "learned 2 images (2 in total)" in stderr.getvalue()
    assert "skipped 1 unreadable" in stderr.getvalue()


def test_fit_saves_nothing_when_no_image_is_readable(tmp_path: Path) -> None:
    write_not_an_image(tmp_path / "train" / "a.png")
    with pytest.raises(CliError, match="none of the 1 images"):
        _fit(tmp_path / "train", tmp_path / "m.padim", io.StringIO())
    assert not (tmp_path / "m.padim").exists()


def test_fit_refuses_to_replace_an_existing_model_unasked(tmp_path: Path) -> None:
    write_images(tmp_path / "train", 2)
    out = tmp_path / "m.padim"
    out.write_bytes(b"precious")
    with pytest.raises(CliError, match="--resume .* --overwrite"):
        _fit(tmp_path / "train", out, io.StringIO())
    assert out.read_bytes() == b"precious"


def test_fit_reports_an_unwritable_output_path(tmp_path: Path) -> None:
    write_images(tmp_path / "train", 2)
    (tmp_path / "file").write_text("a file, so it cannot hold a directory")
    with pytest.raises(CliError, match="cannot write .*model.padim"):
        _fit(tmp_path / "train", tmp_path / "file" / "sub" / "model.padim", io.StringIO())


def test_fit_overwrite_starts_a_new_model(tmp_path: Path,
                                          fitted: tuple[Path, list[Path]]) -> None:
    write_images(tmp_path / "train", 2)
    out = tmp_path / "m.padim"
    out.write_bytes(fitted[0].read_bytes())  # a model that has learned NUM_TRAIN images
    assert _fit(tmp_path / "train", out, io.StringIO(), overwrite=True) == 0
    assert offline.describe(padim.load_model(out))["images_learned"] == 2


def test_resume_rejects_an_option_that_contradicts_the_saved_model(
        tmp_path: Path, fitted: tuple[Path, list[Path]]) -> None:
    write_images(tmp_path / "train", 2)
    out = tmp_path / "m.padim"
    out.write_bytes(fitted[0].read_bytes())
    options = {**dict.fromkeys(FIT_DEFAULTS), "size": (96, 96)}
    with pytest.raises(CliError, match=r"--size 96x96 \(model has 64x64\)"):
        _fit(tmp_path / "train", out, io.StringIO(), resume=True, options=options)


def test_resume_needs_an_existing_model(tmp_path: Path) -> None:
    write_images(tmp_path / "train", 2)
    with pytest.raises(CliError, match="model file not found"):
        _fit(tmp_path / "train", tmp_path / "m.padim", io.StringIO(), resume=True)


def test_a_weights_file_is_recorded_as_an_absolute_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The model reloads its backbone from this path, maybe from another directory.
    monkeypatch.chdir(tmp_path)
    assert offline._weights_option("w/lite0.pth") == str(tmp_path / "w" / "lite0.pth")


def test_weights_keywords_are_not_taken_for_paths() -> None:
    assert [offline._weights_option(w) for w in ("imagenet", "none", None)] == ["imagenet", "none", None]


# ----------------------------------------------------------------------------- score / info


def test_score_flags_every_image_when_the_threshold_is_below_all_scores(
        fitted: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]) -> None:
    model, images = fitted
    rows = _score_rows(capsys, str(model), *map(str, images), "--threshold", "-1")
    assert [row["is_anomaly"] for row in rows] == [True] * len(images)


def test_score_flags_no_image_when_the_threshold_is_above_all_scores(
        fitted: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]) -> None:
    model, images = fitted
    rows = _score_rows(capsys, str(model), *map(str, images), "--threshold", "1e9")
    assert [row["is_anomaly"] for row in rows] == [False] * len(images)


def test_score_jsonl_names_each_heatmap_it_wrote(
        tmp_path: Path, fitted: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]) -> None:
    model, images = fitted
    rows = _score_rows(capsys, str(model), str(images[0]), "--heatmaps", str(tmp_path))
    assert rows[0]["heatmap"] == str(tmp_path / "img0.heatmap.png")


def test_score_reports_a_heatmap_it_cannot_write(
        tmp_path: Path, fitted: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]) -> None:
    model, images = fitted
    (tmp_path / "heatmaps").mkdir()
    (tmp_path / "heatmaps" / "img0.heatmap.png").mkdir()  # a directory where the PNG goes
    assert main(["score", str(model), str(images[0]), "--heatmaps", str(tmp_path / "heatmaps")]) == 1
    assert "cannot write heatmap" in capsys.readouterr().err


def test_score_skips_an_unreadable_image_found_in_a_directory(
        tmp_path: Path, fitted: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]) -> None:
    write_images(tmp_path, 2)
    write_not_an_image(tmp_path / "broken.png")
    assert main(["score", str(fitted[0]), str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 + 2  # header + the readable images
    assert "broken.png" in captured.err and "skipped 1 unreadable" in captured.err


def test_score_fails_on_an_unreadable_image_named_explicitly(
        tmp_path: Path, fitted: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]) -> None:
    broken = write_not_an_image(tmp_path / "broken.png")
    assert main(["score", str(fitted[0]), str(broken)]) == 1
    assert "broken.png: not a readable image" in capsys.readouterr().err


def test_info_shows_the_number_of_images_learned(
        fitted: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(fitted[0])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"images learned:  {NUM_TRAIN}" in lines


def test_fit_warns_when_fewer_images_than_channels(tmp_path: Path) -> None:
    write_images(tmp_path / "train", 3)
    stderr = io.StringIO()
    assert _fit(tmp_path / "train", tmp_path / "m.padim", stderr) == 0
    assert "3 images for 100 channels" in stderr.getvalue()


def test_fit_does_not_warn_with_more_images_than_channels(tmp_path: Path) -> None:
    write_images(tmp_path / "train", 5)
    stderr = io.StringIO()
    options = {**dict.fromkeys(FIT_DEFAULTS), "weights": "none", "size": (64, 64), "num_embeddings": 4}
    assert _fit(tmp_path / "train", tmp_path / "m.padim", stderr, options=options) == 0
    assert "channels" not in stderr.getvalue()

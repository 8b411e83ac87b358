"""The real `padimd` console script, run as a subprocess: exit codes, stdout, stderr, files.

Uses `.venv/bin/padimd` (the project installed in editable mode) next to the test's
interpreter, or `python -m daemon` when the project is not installed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.daemon.image_files import FAST_FIT_ARGS, IMAGE_WH, write_images, write_not_an_image

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).with_name("padimd")
NUM_TRAIN = 4
TIMEOUT_S = 120


def padimd(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run padimd with `args`; never raises on a non-zero exit (the tests check it)."""
    command = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "daemon"]
    # PYTHONPATH lets the `python -m daemon` fallback import the checkout; no PADIMD_*
    # variables leak in from the developer's shell into the service-mode tests.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADIMD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [*command, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=TIMEOUT_S, check=False,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Failed with a one-line-style message naming `fragments`, and no Python traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with NUM_TRAIN training images under train/ and a model fitted on them."""
    root = tmp_path_factory.mktemp("cli")
    write_images(root / "train", NUM_TRAIN)
    result = padimd("fit", "train", "--out", "model.padim", *FAST_FIT_ARGS, cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def info_json(model: Path, cwd: Path) -> dict[str, object]:
    result = padimd("info", model, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ----------------------------------------------------------------------------- usage


def test_no_arguments_prints_usage_and_exits_2(tmp_path: Path) -> None:
    result = padimd(cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: padimd")


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    from daemon import __version__

    result = padimd("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"padimd {__version__}"


def test_an_invalid_size_is_a_usage_error(tmp_path: Path) -> None:
    result = padimd("fit", tmp_path, "--out", "m.padim", "--size", "big", cwd=tmp_path)
    assert result.returncode == 2
    assert "--size" in result.stderr


def test_config_cannot_be_combined_with_a_command(tmp_path: Path) -> None:
    result = padimd("--config", "padimd.toml", "info", "m.padim", cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot be combined" in result.stderr


def test_config_with_an_unknown_key_exits_non_zero_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "padimd.toml").write_text('[kafka]\nbootstrap_serverz = "localhost:9092"\n')
    result = padimd("--config", "padimd.toml", cwd=tmp_path)
    assert_clean_error(result, "kafka.bootstrap_serverz")


def test_config_that_does_not_exist_exits_non_zero_naming_it(tmp_path: Path) -> None:
    assert_clean_error(padimd("--config", "nowhere.toml", cwd=tmp_path), "nowhere.toml")


def test_the_variant_choices_are_the_variants_fit_can_build() -> None:
    from daemon import cli, offline

    assert set(cli.VARIANTS) == set(offline.VARIANT_CLASSES)


def test_the_offline_commands_do_not_import_kafka() -> None:
    # A fresh interpreter: this test session may already have imported aiokafka.
    code = ("import sys, daemon.cli, daemon.offline; "
            "print(sorted(m for m in sys.modules if m.startswith(('aiokafka', 'daemon.kafka'))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=TIMEOUT_S, check=True)
    assert result.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- fit / info


def test_info_shows_the_images_learned(workdir: Path) -> None:
    assert info_json(workdir / "model.padim", workdir)["images_learned"] == NUM_TRAIN


def test_info_text_names_variant_backbone_and_size(workdir: Path) -> None:
    result = padimd("info", "model.padim", cwd=workdir)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "variant:         padim" in lines
    assert "backbone:        efficientnet_lite0" in lines
    assert "size:            64x64" in lines


def test_resume_adds_the_new_images_to_the_count(workdir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.padim"
    model.write_bytes((workdir / "model.padim").read_bytes())
    write_images(tmp_path / "more", 3, seed=1)
    result = padimd("fit", "more", "--out", model, "--resume", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert info_json(model, tmp_path)["images_learned"] == NUM_TRAIN + 3


def test_fit_with_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    result = padimd("fit", "absent", "--out", "m.padim", *FAST_FIT_ARGS, cwd=tmp_path)
    assert_clean_error(result, "not a directory: absent")


# ----------------------------------------------------------------------------- score


def test_score_prints_one_finite_score_per_image(workdir: Path) -> None:
    result = padimd("score", "model.padim", "train", cwd=workdir)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["score", "path"]
    assert [row.split()[1] for row in rows] == [f"train/img{i}.png" for i in range(NUM_TRAIN)]
    assert all(math.isfinite(float(row.split()[0])) for row in rows)


def test_score_jsonl_lines_parse_with_path_score_and_is_anomaly(workdir: Path) -> None:
    result = padimd("score", "model.padim", "train", "--format", "jsonl", "--threshold", "0",
                    cwd=workdir)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == NUM_TRAIN
    assert all(set(row) == {"path", "score", "is_anomaly"} for row in rows)
    assert all(isinstance(row["score"], float) and math.isfinite(row["score"]) for row in rows)


def test_score_writes_heatmap_pngs_of_the_input_size(workdir: Path, tmp_path: Path) -> None:
    result = padimd("score", workdir / "model.padim", workdir / "train", "--heatmaps", tmp_path / "hm",
                    "--threshold", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = sorted((tmp_path / "hm").iterdir())
    assert [p.name for p in written] == [f"img{i}.heatmap.png" for i in range(NUM_TRAIN)]
    for path in written:
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", IMAGE_WH)


def test_score_with_a_missing_image_fails_cleanly(workdir: Path) -> None:
    result = padimd("score", "model.padim", "nope.png", cwd=workdir)
    assert_clean_error(result, "nope.png")
    assert result.stdout == ""


def test_score_with_a_non_image_file_fails_cleanly(workdir: Path, tmp_path: Path) -> None:
    fake = write_not_an_image(tmp_path / "fake.jpg")
    result = padimd("score", workdir / "model.padim", fake, cwd=tmp_path)
    assert_clean_error(result, "fake.jpg", "not a readable image")


def test_score_with_a_missing_model_fails_cleanly(workdir: Path) -> None:
    assert_clean_error(padimd("score", "absent.padim", "train", cwd=workdir), "absent.padim")


def test_score_with_a_corrupt_model_fails_cleanly(workdir: Path, tmp_path: Path) -> None:
    data = bytearray((workdir / "model.padim").read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the tensor payload
    (tmp_path / "corrupt.padim").write_bytes(bytes(data))
    result = padimd("score", "corrupt.padim", workdir / "train", cwd=tmp_path)
    assert_clean_error(result, "corrupt.padim", "corrupt")


def test_score_with_a_foreign_file_as_model_fails_cleanly(workdir: Path) -> None:
    result = padimd("score", "train/img0.png", "train", cwd=workdir)
    assert_clean_error(result, "img0.png", "not a padim model")


def test_score_with_a_model_of_one_image_explains_it_is_not_fitted(tmp_path: Path) -> None:
    write_images(tmp_path / "one", 1)
    fitted = padimd("fit", "one", "--out", "one.padim", *FAST_FIT_ARGS, cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr
    result = padimd("score", "one.padim", "one", cwd=tmp_path)
    assert_clean_error(result, "one.padim cannot score yet")
    assert result.stdout == ""  # not even the table header

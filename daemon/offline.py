"""The offline `padimd` commands: fit a model on a directory, score images, describe a model.

Each command is a function returning an exit code and writing to the streams it is
given, so tests can run them in-process. User mistakes raise `CliError`; the library's
own errors (`padim.errors.PadimError`: corrupt model file, bad weights, unfitted model)
propagate; `daemon.cli.main` turns both into one line on stderr and exit code 1.

Unreadable images found by expanding a directory are reported and skipped (a
directory of camera captures often holds a truncated file or two); an unreadable
image named explicitly on the command line is an error, because the user asked for it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from PIL import Image
from tqdm import tqdm

import padim
import padim.images
from padim.backbones import WEIGHTS_IMAGENET, WEIGHTS_NONE
# Importing the variants also registers them, so load_model reads their files.
from padim.variants import PaDiMNVP, PaDiMShared, PaDiMSVDD
from daemon.cli import CliError
from daemon.overlay import render_overlay

# Suffixes `fit` and `score` pick up when expanding a directory (compared lower-case);
# the library's list, so the CLI and the library agree on what an image file is.
IMAGE_SUFFIXES = padim.images.IMAGE_SUFFIXES
HEATMAP_SUFFIX = ".heatmap.png"

# `--variant` name -> the class that implements it (all take the same keywords).
VARIANT_CLASSES: dict[str, type[padim.PatchModel]] = {
    "padim": padim.PaDiM, "shared": PaDiMShared, "svdd": PaDiMSVDD, "nvp": PaDiMNVP,
}


@dataclass(frozen=True, slots=True)
class ImageSource:
    """One image to process: its path, whether the user named it, and its heatmap name."""

    path: Path
    explicit: bool  # named on the command line (errors are fatal) vs found in a directory
    relative: Path  # path below the argument it came from, for naming heatmaps


class UnreadableImage(Exception):
    """A file with an image suffix that Pillow cannot decode."""


def find_images(root: Path) -> list[Path]:
    """Every file below `root` (recursively) with an image suffix, sorted by path."""
    return sorted(
        path for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )


def expand_inputs(paths: Sequence[Path]) -> list[ImageSource]:
    """Files stay as given; directories expand to their images. Missing paths are errors."""
    sources: list[ImageSource] = []
    for path in paths:
        if path.is_dir():
            found = find_images(path)
            if not found:
                raise CliError(f"no images ({_suffix_list()}) found under {path}")
            sources.extend(ImageSource(p, False, p.relative_to(path)) for p in found)
        elif path.is_file():
            sources.append(ImageSource(path, True, Path(path.name)))
        else:
            raise CliError(f"no such file or directory: {path}")
    return sources


def _suffix_list() -> str:
    return ", ".join(sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES))


def open_image(path: Path) -> Image.Image:
    """Decode `path` fully as RGB, or raise `UnreadableImage`.

    No EXIF rotation: the service (daemon.frames) and padim.load_image score the pixels
    as stored, and a model must see a camera's images the same way offline and online.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # forces the full decode inside the try
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a fact about the file
        # Pillow reports unknown formats as OSError, and malformed data as whatever its
        # decoders hit (ValueError, SyntaxError, struct.error, EOFError, ...).
        raise UnreadableImage(f"{path}: not a readable image ({exc})") from exc


def _batches(items: Sequence[ImageSource], batch_size: int) -> Iterator[Sequence[ImageSource]]:
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _load_batch(
    sources: Sequence[ImageSource], size: tuple[int, int], stderr: TextIO
) -> tuple[list[ImageSource], list[Image.Image], torch.Tensor | None, int]:
    """Decode a batch: (loaded sources, their images, tensor (B, 3, H, W) or None, skipped)."""
    loaded: list[ImageSource] = []
    images: list[Image.Image] = []
    skipped = 0
    for source in sources:
        try:
            image = open_image(source.path)
        except UnreadableImage as exc:
            if source.explicit:
                raise CliError(str(exc)) from exc
            print(f"padimd: warning: skipping {exc}", file=stderr)
            skipped += 1
            continue
        loaded.append(source)
        images.append(image)
    if not images:
        return loaded, images, None, skipped
    return loaded, images, padim.images_to_tensor(images, size), skipped


# ----------------------------------------------------------------------------- fit


def _new_model(options: Mapping[str, Any], defaults: Mapping[str, Any], device: str) -> padim.PatchModel:
    """A fresh model of the chosen variant, unset options taking their defaults."""
    chosen = {key: defaults[key] if value is None else value for key, value in options.items()}
    return VARIANT_CLASSES[chosen.pop("variant")](device=device, **chosen)


def _resume_model(out: Path, options: Mapping[str, Any], device: str) -> padim.PatchModel:
    """Load `out` to train on; options the user typed must agree with the saved model."""
    if not out.is_file():
        raise CliError(f"--resume: model file not found: {out} (leave out --resume to create it)")
    model = padim.load_model(out, device=device)
    saved = describe(model)
    conflicts = [
        f"--{key.replace('_', '-')} {_show(value)} (model has {_show(saved[key])})"
        for key, value in options.items()
        if value is not None and not _same_setting(key, value, saved)
    ]
    if conflicts:
        raise CliError(f"--resume: {out} was fitted with other settings: " + "; ".join(conflicts))
    return model


def _same_setting(key: str, value: Any, saved: Mapping[str, Any]) -> bool:
    if key == "size":
        return list(value) == list(saved["size"])
    if key == "weights":
        # The file records the weights' identity, not the words on the command line.
        return str(value) == saved.get("weights") or str(value) == saved.get("weights_id")
    return value == saved[key]


def _weights_option(weights: str | None) -> str | None:
    """A weights file as an absolute path: the model records it and reloads from it later,
    possibly from another working directory. The keywords pass through unchanged."""
    if weights is None or weights in (WEIGHTS_IMAGENET, WEIGHTS_NONE):
        return weights
    return str(Path(weights).expanduser().resolve())


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return str(value)


def fit(
    images_dir: Path,
    out: Path,
    *,
    options: Mapping[str, Any],
    defaults: Mapping[str, Any],
    batch_size: int,
    resume: bool,
    overwrite: bool,
    device: str,
    quiet: bool,
    stderr: TextIO = sys.stderr,
) -> int:
    """Learn every image under `images_dir` and save the model to `out`.

    `options` are the model settings the user gave (None = not given). A new model
    fills the gaps from `defaults`; with `resume` the saved model's settings rule and
    a contradicting option is an error rather than silently ignored.
    """
    if not images_dir.is_dir():
        raise CliError(f"not a directory: {images_dir}")
    if resume and overwrite:
        raise CliError("--resume and --overwrite contradict each other; choose one")
    if out.is_dir():
        raise CliError(f"--out must be a model file, not a directory: {out}")
    if out.exists() and not (resume or overwrite):
        raise CliError(f"{out} exists: pass --resume to train it further or --overwrite to replace it")
    sources = [ImageSource(p, False, p.relative_to(images_dir)) for p in find_images(images_dir)]
    if not sources:
        raise CliError(f"no images ({_suffix_list()}) found under {images_dir}")

    options = {**options, "weights": _weights_option(options["weights"])}
    model = _resume_model(out, options, device) if resume else _new_model(options, defaults, device)
    size = model.size
    learned_before = model.num_trained
    skipped = 0
    progress = tqdm(
        total=len(sources), unit="img", desc="fit", file=stderr,
        disable=quiet or not stderr.isatty(),
    )
    with progress:
        for chunk in _batches(sources, batch_size):
            _, _, batch, chunk_skipped = _load_batch(chunk, size, stderr)
            skipped += chunk_skipped
            if batch is not None:
                model.train_one_batch(batch)
            progress.update(len(chunk))
    learned = model.num_trained - learned_before
    if learned == 0:
        raise CliError(f"none of the {len(sources)} images under {images_dir} could be read; nothing saved")
    try:
        model.save(out)
    except OSError as exc:  # unwritable directory, disk full: the user's to fix, not a bug
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from exc
    if not quiet:
        total = _count(model.num_trained)
        print(
            f"padimd: learned {_count(learned)} images ({total} in total) into {out}"
            + (f"; skipped {skipped} unreadable" if skipped else ""),
            file=stderr,
        )
        if model.num_trained < 2:
            print("padimd: warning: a model needs at least 2 images before it can score", file=stderr)
        elif isinstance(model, padim.PaDiM) and not isinstance(model, PaDiMShared) \
                and model.num_trained <= model.num_embeddings:
            # Per-position covariances from fewer samples than dimensions are
            # rank-deficient: scores come out several times too high.
            print(f"padimd: warning: {total} images for {model.num_embeddings} channels: scores run "
                  "high until the model has learned more images than channels (2x or more is better)",
                  file=stderr)
    return 0


def _count(value: float) -> str:
    """Image counts are floats (weighted when forgetting); show integers plainly."""
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


# ----------------------------------------------------------------------------- score


def heatmap_path(directory: Path, source: ImageSource, taken: set[Path]) -> Path:
    """`DIR/<relative dir>/<stem>.heatmap.png`, made unique within one run.

    Mirrors the image's place below the directory argument, so `a/x.png` and `b/x.png`
    do not overwrite each other; `x.png` next to `x.jpg` gets a numbered suffix.
    """
    base = directory / source.relative.parent / source.path.stem
    candidate = base.with_name(base.name + HEATMAP_SUFFIX)
    number = 1
    while candidate in taken:
        candidate = base.with_name(f"{base.name}-{number}{HEATMAP_SUFFIX}")
        number += 1
    taken.add(candidate)
    return candidate


def score(
    model_path: Path,
    inputs: Sequence[Path],
    *,
    heatmaps: Path | None,
    output_format: str,
    threshold: float | None,
    batch_size: int,
    device: str,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """Print one score per image (table or JSON lines); optionally write heatmap overlays."""
    sources = expand_inputs(inputs)  # fail on a typo before the (slow) model load
    model = padim.load_model(model_path, device=device)  # PersistError names a bad file
    size = model.size
    if heatmaps is not None:
        try:
            heatmaps.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"cannot create heatmap directory {heatmaps}: {exc.strerror or exc}") from exc

    # The table header waits for the first row, so a model that cannot score yet fails
    # with its error alone on the terminal.
    header_pending = output_format == "table"
    taken: set[Path] = set()
    scored = anomalous = skipped = 0
    for chunk in _batches(sources, batch_size):
        loaded, images, batch, chunk_skipped = _load_batch(chunk, size, stderr)
        skipped += chunk_skipped
        if batch is None:
            continue
        try:
            image_scores, maps = model.score(batch)  # (B,), (B, H, W)
        except padim.NotFittedError as exc:
            raise CliError(f"{model_path} cannot score yet: {exc}; fit it on more images") from exc
        for source, image, value, amap in zip(loaded, images, image_scores.tolist(), maps):
            is_anomaly = None if threshold is None else bool(value > threshold)
            anomalous += bool(is_anomaly)
            written = None
            if heatmaps is not None:
                written = heatmap_path(heatmaps, source, taken)
                overlay = render_overlay(image, amap.detach().cpu().numpy(), threshold)
                try:
                    written.parent.mkdir(parents=True, exist_ok=True)
                    overlay.save(written, format="PNG")
                except OSError as exc:
                    raise CliError(f"cannot write heatmap {written}: {exc.strerror or exc}") from exc
            if output_format == "jsonl":
                print(_json_row(source.path, value, is_anomaly, written), file=stdout)
            else:
                if header_pending:
                    print(_table_row("score", "anomaly" if threshold is not None else None, "path"),
                          file=stdout)
                    header_pending = False
                flag = None if is_anomaly is None else ("yes" if is_anomaly else "no")
                print(_table_row(f"{value:.4f}", flag, str(source.path)), file=stdout)
            stdout.flush()  # one line per image as it is scored, also through a pipe
            scored += 1

    summary = f"padimd: scored {scored} images"
    if threshold is not None:
        summary += f", {anomalous} above threshold {threshold:g}"
    if skipped:
        summary += f"; skipped {skipped} unreadable"
    print(summary, file=stderr)
    return 0


def _table_row(value: str, flag: str | None, path: str) -> str:
    """Score right-aligned, optional anomaly flag, path last (paths vary in width)."""
    return f"{value:>12}  {flag:<7}  {path}" if flag is not None else f"{value:>12}  {path}"


def _json_row(path: Path, value: float, is_anomaly: bool | None, heatmap: Path | None) -> str:
    row: dict[str, Any] = {"path": str(path), "score": value if math.isfinite(value) else None}
    if is_anomaly is not None:
        row["is_anomaly"] = is_anomaly
    if heatmap is not None:
        row["heatmap"] = str(heatmap)
    return json.dumps(row)


# ----------------------------------------------------------------------------- info


def describe(model: padim.PatchModel) -> dict[str, Any]:
    """The facts `padimd info` shows, as JSON-able values."""
    extractor = model.extractor
    return {
        "variant": model.variant,
        "backbone": extractor.backbone,
        "weights": extractor.weights,
        "weights_id": extractor.weights_id,
        "size": list(extractor.size),
        "grid": list(extractor.grid),
        "num_embeddings": extractor.num_embeddings,
        "seed": extractor.seed,
        "images_learned": model.num_trained,
        "state_bytes": model.state_bytes(),
        "library_version": padim.__version__,
    }


def info(model_path: Path, *, as_json: bool, stdout: TextIO = sys.stdout) -> int:
    """Describe a model file: one `key: value` line per fact, or one JSON object."""
    facts = describe(padim.load_model(model_path))  # PersistError names a bad file
    if as_json:
        print(json.dumps(facts), file=stdout)
        return 0
    shown = dict(facts, size=_show(facts["size"]), grid=_show(facts["grid"]),
                 images_learned=_count(facts["images_learned"]))
    width = max(len(key) for key in shown)
    for key, value in shown.items():
        print(f"{key.replace('_', ' ') + ':':<{width + 2}}{value}", file=stdout)
    return 0

"""Throughput and state size of PaDiM on CPU, against the backbone it cannot beat.

Prints, for resnet18 (d = 100) and efficientnet_lite0 (d = 100) at 224 px, batch 16:
images/s of the backbone forward alone, the feature extractor, PaDiM's own work on
ready embeddings (``train_embeddings``, ``predict_embeddings``), ``train_one_batch``,
``predict`` and ``score``; each as a ratio to the backbone alone; the seconds to
rebuild the scoring cache after learning; and the bytes of learned statistics and of
the scoring cache. Targets are printed beside the figures they apply to; the exit
status is 1 when one is missed.

    .venv/bin/python bench/bench_padim.py            # 3 warm-up + 10 timed batches per row
    .venv/bin/python bench/bench_padim.py --quick    # 1 warm-up + 3 timed batches per row

Speed does not depend on the weight values, so resnet18 runs with random weights when
torchvision's ImageNet checkpoint is not cached (the output says which).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# Run from a checkout without installing: bench/ sits next to padim/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from padim import FeatureExtractor, PaDiM  # noqa: E402
from padim.backbones import load_backbone, torchvision_cache_path  # noqa: E402

SIZE = 224
BATCH = 16
NUM_EMBEDDINGS = 100
MB = 1_000_000  # decimal megabytes: the stricter reading of "256 MB"

# Targets (resnet18, d = 100, 224 px): PaDiM's own work must not cost more than a
# quarter of the backbone's time, and its state must fit a small edge box.
TARGET_RATIO = 0.8
TARGET_STATE_MB = 256


@dataclass(frozen=True)
class Timing:
    """Median and fastest seconds per batch over the timed repeats."""

    median_s: float
    best_s: float

    @property
    def images_per_s(self) -> float:
        return BATCH / self.median_s

    @property
    def best_images_per_s(self) -> float:
        return BATCH / self.best_s


def time_interleaved(
    steps: dict[str, Callable[[], object]], warmup: int, repeats: int
) -> dict[str, Timing]:
    """Median seconds per call of each step, timing the steps in turn within each repeat.

    Round-robin rather than one step after the other: on a shared machine a burst of
    someone else's load then slows every step alike instead of one of them, so the
    ratios between steps stay meaningful. ``warmup`` untimed rounds come first
    (allocator, lazy caches).
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(values), min(values)) for name, values in times.items()}


def resnet18_weights() -> tuple[str, str]:
    """('imagenet' or 'none', a note for the output): random init when nothing is cached."""
    if torchvision_cache_path("resnet18").is_file():
        return "imagenet", "ImageNet weights"
    return "none", "random weights: torchvision's checkpoint is not cached (speed does not depend on the values)"


@dataclass(frozen=True)
class Row:
    stage: str
    timing: Timing
    ratio: float  # backbone-alone seconds / this stage's seconds
    target: str


def bench_model(backbone: str, weights: str, warmup: int, repeats: int) -> tuple[list[Row], dict[str, float]]:
    """Time each stage for one backbone; return the rows and the byte counts."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=generator)  # (B, 3, H, W) in [0, 1]
    normalised = (images - 0.5) / 0.5  # the values do not matter for speed, only the shapes

    net = load_backbone(backbone, weights).taps
    extractor = FeatureExtractor(backbone=backbone, weights=weights, size=SIZE, num_embeddings=NUM_EMBEDDINGS)
    embeddings = extractor(images)  # (B, d, h, w)

    # Two models on one extractor: ``learner`` keeps learning while it is timed;
    # ``scorer`` learned a few batches once, so its scoring cache stays valid and
    # predict/score are timed without the rebuild (timed on its own below).
    learner = PaDiM(extractor=extractor)
    scorer = PaDiM(extractor=extractor)
    for _ in range(2):
        scorer.train_one_batch(torch.rand(BATCH, 3, SIZE, SIZE, generator=generator))
    start = time.perf_counter()
    scorer.predict(images[:1])
    rebuild_s = time.perf_counter() - start

    def backbone_alone() -> object:
        with torch.inference_mode():
            return net(normalised)

    timings = time_interleaved(
        {
            "backbone forward alone": backbone_alone,
            "feature extractor": lambda: extractor(images),
            "train_embeddings (statistics only)": lambda: learner.train_embeddings(embeddings),
            "predict_embeddings (distances only)": lambda: scorer.predict_embeddings(embeddings),
            "train_one_batch": lambda: learner.train_one_batch(images),
            "predict": lambda: scorer.predict(images),
            "score (predict + maps)": lambda: scorer.score(images),
        },
        warmup,
        repeats,
    )
    alone = timings["backbone forward alone"]
    is_target = backbone == "resnet18" and NUM_EMBEDDINGS == 100
    targeted = {"train_one_batch", "predict"} if is_target else set()
    rows = [
        Row(name, timing, alone.median_s / timing.median_s, f">= {TARGET_RATIO}x" if name in targeted else "")
        for name, timing in timings.items()
    ]
    sizes = {
        "state_bytes": float(scorer.state_bytes()),
        "inference_bytes": float(scorer.inference_bytes()),
        "rebuild_s": rebuild_s,
        "positions": float(extractor.num_positions),
    }
    return rows, sizes


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 3 timed batches per row")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads (default: torch's choice); 1 gives steadier figures on a shared machine",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warmup, repeats = (1, 3) if args.quick else (3, 10)

    r18_weights, r18_note = resnet18_weights()
    print(f"padim bench: {SIZE}x{SIZE} px, batch {BATCH}, d={NUM_EMBEDDINGS}, CPU, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}")
    print(f"median of {repeats} batches after {warmup} warm-up; images/s = {BATCH} / median seconds per batch; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print(f"resnet18: {r18_note}; efficientnet_lite0: bundled ImageNet weights\n")

    print("| model | stage | images/s | x backbone | target | best images/s |")
    print("|---|---|---:|---:|---|---:|")
    summaries = []
    missed = False
    for backbone, weights in (("resnet18", r18_weights), ("efficientnet_lite0", "imagenet")):
        rows, sizes = bench_model(backbone, weights, warmup, repeats)
        for row in rows:
            ratio = f"{row.ratio:.2f}"
            target = ""
            if row.target:
                ok = row.ratio >= TARGET_RATIO
                missed |= not ok
                target = f"{row.target} {verdict(ok)}"
            print(f"| {backbone} | {row.stage} | {row.timing.images_per_s:.1f} | {ratio} | {target} "
                  f"| {row.timing.best_images_per_s:.1f} |")
        summaries.append((backbone, sizes))
        sys.stdout.flush()

    print("\n| model | positions | statistics (state_bytes) | scoring cache (inference_bytes) | total | cache rebuild | target |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for backbone, sizes in summaries:
        total = sizes["state_bytes"] + sizes["inference_bytes"]
        target = ""
        if backbone == "resnet18":
            ok = total <= TARGET_STATE_MB * MB
            missed |= not ok
            target = f"total <= {TARGET_STATE_MB} MB {verdict(ok)}"
        print(f"| {backbone} | {sizes['positions']:.0f} | {sizes['state_bytes'] / MB:.1f} MB | "
              f"{sizes['inference_bytes'] / MB:.1f} MB | {total / MB:.1f} MB | {sizes['rebuild_s']:.2f} s | {target} |")
    print(f"\nMB = 10^6 bytes. The scoring cache is rebuilt on the first score after any learning. "
          f"Load average at end {os.getloadavg()[0]:.1f}.")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Detection quality of PaDiM and its variants on real texture photos with pasted defects.

Prints image AUROC and pixel AUROC per model, weights and texture, plus training and
scoring time, for the MVTec-like data of :mod:`padim.synthetic` (skimage's brick,
grass and gravel photographs; train crops from the left half, test crops from the
right half; scratches, blobs and, on brick, cut-paste defects with pixel masks).

    .venv/bin/python bench/bench_detection.py                     # PaDiM, imagenet + random init
    .venv/bin/python bench/bench_detection.py --models padim shared svdd nvp
    .venv/bin/python bench/bench_detection.py --seeds 0 1 2 3 4   # spread over data draws

Quality figures, not speed targets: the test suite holds the pass bars
(tests/padim/test_detection.py); this script is how the figures quoted in notes and
READMEs are produced. Needs the test extra (scikit-image, scikit-learn).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from padim import FeatureExtractor, PaDiM, PaDiMNVP, PaDiMShared, PaDiMSVDD, PatchModel, synthetic  # noqa: E402

# Cut-paste of grass or gravel is still grass or gravel (measured at chance), so only
# brick gets it; see tests/padim/test_detection.py.
KINDS: dict[str, tuple[str, ...]] = {
    "brick": synthetic.DEFECT_KINDS,
    "grass": ("scratch", "blob"),
    "gravel": ("scratch", "blob"),
}
MODELS: dict[str, Callable[[FeatureExtractor], PatchModel]] = {
    "padim": lambda ex: PaDiM(extractor=ex),
    "shared": lambda ex: PaDiMShared(extractor=ex),
    "svdd": lambda ex: PaDiMSVDD(extractor=ex),
    "nvp": lambda ex: PaDiMNVP(extractor=ex),
}


@dataclass(frozen=True)
class Row:
    model: str
    weights: str
    texture: str
    seed: int
    image_auroc: float
    pixel_auroc: float
    train_s: float
    score_s: float


def evaluate(model_name: str, extractor: FeatureExtractor, weights: str, texture: str, seed: int,
             args: argparse.Namespace) -> Row:
    data = synthetic.make_dataset(
        texture, size=args.size, n_train=args.train, n_test_normal=args.test_normal,
        n_test_defective=args.test_defective, seed=seed, kinds=KINDS[texture],
    )
    model = MODELS[model_name](extractor)
    started = time.perf_counter()
    # Gradient-trained variants see the training set several times; PaDiM's statistics
    # are exact after one pass, so more passes would only count images twice.
    passes = 1 if model_name in ("padim", "shared") else args.passes
    for _ in range(passes):
        for batch in data.train.split(args.batch):
            model.train_one_batch(batch)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    scores, maps = model.score(data.test_images)  # (N,), (N, H, W)
    score_s = time.perf_counter() - started
    return Row(
        model_name, weights, texture, seed,
        image_auroc=float(roc_auc_score(data.test_labels.numpy(), scores.numpy())),
        pixel_auroc=float(roc_auc_score(data.test_masks.flatten().numpy(), maps.flatten().numpy())),
        train_s=train_s, score_s=score_s,
    )


def print_rows(rows: list[Row]) -> None:
    print("| model | weights | texture | image AUROC | pixel AUROC | train s | score s |")
    print("|---|---|---|---:|---:|---:|---:|")
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.model, row.weights, row.texture), []).append(row)
    for (model, weights, texture), group in groups.items():
        image = [r.image_auroc for r in group]
        pixel = [r.pixel_auroc for r in group]

        def fmt(values: list[float]) -> str:
            if len(values) == 1:
                return f"{values[0]:.3f}"
            return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"

        print(f"| {model} | {weights} | {texture} | {fmt(image)} | {fmt(pixel)} | "
              f"{statistics.mean(r.train_s for r in group):.1f} | "
              f"{statistics.mean(r.score_s for r in group):.1f} |")
    print()
    print("| model | weights | mean image AUROC | mean pixel AUROC |")
    print("|---|---|---:|---:|")
    means: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        means.setdefault((row.model, row.weights), []).append(row)
    for (model, weights), group in means.items():
        print(f"| {model} | {weights} | {statistics.mean(r.image_auroc for r in group):.3f} | "
              f"{statistics.mean(r.pixel_auroc for r in group):.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["padim"])
    parser.add_argument("--weights", nargs="+", choices=["imagenet", "none"], default=["imagenet", "none"])
    parser.add_argument("--textures", nargs="+", choices=sorted(KINDS), default=sorted(KINDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--train", type=int, default=60, help="normal training crops")
    parser.add_argument("--test-normal", type=int, default=30)
    parser.add_argument("--test-defective", type=int, default=45)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--passes", type=int, default=3, help="epochs for the gradient-trained variants")
    args = parser.parse_args(argv)

    print(f"detection bench: efficientnet_lite0 d=100, {args.size} px, {args.train} train / "
          f"{args.test_normal} normal + {args.test_defective} defective test crops per texture, "
          f"seeds {args.seeds}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows: list[Row] = []
    for weights in args.weights:
        extractor = FeatureExtractor(backbone="efficientnet_lite0", weights=weights, size=args.size,
                                     num_embeddings=100, seed=0)
        for model_name in args.models:
            for texture in args.textures:
                for seed in args.seeds:
                    rows.append(evaluate(model_name, extractor, weights, texture, seed, args))
                    print(f"  {model_name} {weights} {texture} seed {seed}: image "
                          f"{rows[-1].image_auroc:.3f} pixel {rows[-1].pixel_auroc:.3f}", flush=True)
    print()
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

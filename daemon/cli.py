"""The `padimd` command line: service mode and the offline fit / score / info commands.

    padimd --config config.toml             run the Kafka service (daemon.app)
    padimd fit IMAGES_DIR --out model.padim learn normal images into a model file
    padimd score MODEL IMAGES...            score images, optionally write heatmaps
    padimd info MODEL                       describe a model file

This module only parses arguments and translates errors into exit codes; the work is
in `daemon.offline` (offline commands) and `daemon.app` (service). Both are imported
lazily so `padimd --help` stays instant and the offline commands never import Kafka.

Exit codes: 0 success, 1 an error while running (bad file, corrupt model, ...),
2 a usage error (bad or missing arguments), 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from daemon import __version__  # cheap: the package imports neither torch nor Kafka

PROG = "padimd"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl+C

# Defaults of a *new* model. The fit options default to None so that `--resume` can
# tell an option the user typed (which must match the saved model) from one left out.
FIT_DEFAULTS = {
    "backbone": "efficientnet_lite0",
    "weights": "imagenet",
    "size": (224, 224),
    "num_embeddings": 100,
    "seed": 0,
    "variant": "padim",
}
# The keys of daemon.offline.VARIANT_CLASSES, repeated here so that parsing needs no
# torch import; tests/daemon/test_cli.py checks the two agree.
VARIANTS = ("padim", "shared", "svdd", "nvp")
DEFAULT_BATCH_SIZE = 16
DEVICE_HELP = "torch device: cpu, cuda, cuda:N, or auto (CUDA when present); default cpu"


class CliError(Exception):
    """A user-facing failure: printed as one line on stderr, exit code 1, no traceback."""


def _size(text: str) -> tuple[int, int]:
    """Parse `--size`: `224` (square) or `HxW` such as `240x320`."""
    parts = text.lower().split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive N or HxW, got {text!r}")
    return (values[0], values[-1])


def _positive_int(text: str) -> int:
    """Parse an integer > 0 (batch sizes, embedding counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected an integer > 0, got {value}")
    return value


def _finite_float(text: str) -> float:
    """Parse a finite float (thresholds: NaN would silently flag nothing)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The full `padimd` argument parser (service flag plus fit/score/info subcommands)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="PaDiM visual anomaly detection: run the camera-stream service "
        "(--config) or fit, score and inspect models offline.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="run the service with this TOML configuration file")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    fit = commands.add_parser("fit", help="learn the normal images of a directory into a model",
                              description="Learn every image under IMAGES_DIR (recursively, "
                              "by extension) as normal and save the model to --out.")
    fit.add_argument("images_dir", type=Path, metavar="IMAGES_DIR")
    fit.add_argument("--out", "-o", type=Path, required=True, metavar="MODEL",
                     help="model file to write (e.g. model.padim)")
    fit.add_argument("--backbone", help=f"feature backbone (default {FIT_DEFAULTS['backbone']})")
    fit.add_argument("--weights", metavar="imagenet|none|PATH",
                     help="backbone weights: bundled ImageNet, random (none), or a "
                     f"state_dict file (default {FIT_DEFAULTS['weights']})")
    fit.add_argument("--size", type=_size, metavar="N|HxW",
                     help="model input size in pixels (default 224)")
    fit.add_argument("--num-embeddings", type=_positive_int, metavar="D",
                     help=f"random feature channels kept (default {FIT_DEFAULTS['num_embeddings']})")
    fit.add_argument("--seed", type=int, help="seed of the channel subset (default 0)")
    fit.add_argument("--variant", choices=VARIANTS,
                     help=f"model variant (default {FIT_DEFAULTS['variant']})")
    fit.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, metavar="N",
                     help=f"images per forward pass (default {DEFAULT_BATCH_SIZE})")
    fit.add_argument("--resume", action="store_true",
                     help="load the existing --out model and train it on these images")
    fit.add_argument("--overwrite", action="store_true",
                     help="replace an existing --out model instead of refusing")
    fit.add_argument("--device", default="cpu", help=DEVICE_HELP)
    fit.add_argument("--quiet", "-q", action="store_true",
                     help="no progress bar or summary on stderr")

    score = commands.add_parser("score", help="score images with a model",
                                description="Print one anomaly score per image; directories "
                                "expand to their images (recursively, sorted).")
    score.add_argument("model", type=Path, metavar="MODEL")
    score.add_argument("images", type=Path, nargs="+", metavar="IMAGES")
    score.add_argument("--heatmaps", type=Path, metavar="DIR",
                       help="write a PNG overlay of each image's anomaly map into DIR")
    score.add_argument("--format", choices=("table", "jsonl"), default="table",
                       help="output format (default table)")
    score.add_argument("--threshold", type=_finite_float, metavar="T",
                       help="flag images whose score exceeds T (and outline regions in heatmaps)")
    score.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, metavar="N",
                       help=f"images per forward pass (default {DEFAULT_BATCH_SIZE})")
    score.add_argument("--device", default="cpu", help=DEVICE_HELP)

    info = commands.add_parser("info", help="describe a model file")
    info.add_argument("model", type=Path, metavar="MODEL")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser,
         stdout: TextIO, stderr: TextIO) -> int:
    """Dispatch parsed arguments; raises CliError / PadimError for the caller to report."""
    if args.config is not None:
        if args.command is not None:
            parser.error(f"--config runs the service; it cannot be combined with {args.command!r}")
        try:
            from daemon.app import run_service  # lazy: pulls in Kafka and metrics
        except ModuleNotFoundError as exc:
            raise CliError(f"service mode is unavailable: {exc}") from exc
        # run_service reports a missing or invalid config file itself (naming the key).
        return run_service(args.config)
    if args.command is None:
        parser.print_usage(stderr)
        print(f"{PROG}: error: give --config FILE or a command (fit, score, info)", file=stderr)
        return EXIT_USAGE

    from daemon import offline  # lazy: imports torch

    if args.command == "fit":
        return offline.fit(
            args.images_dir, args.out,
            options={key: getattr(args, key) for key in FIT_DEFAULTS},
            defaults=FIT_DEFAULTS, batch_size=args.batch_size, resume=args.resume,
            overwrite=args.overwrite, device=args.device, quiet=args.quiet,
            stderr=stderr,
        )
    if args.command == "score":
        return offline.score(
            args.model, args.images, heatmaps=args.heatmaps, output_format=args.format,
            threshold=args.threshold, batch_size=args.batch_size, device=args.device,
            stdout=stdout, stderr=stderr,
        )
    return offline.info(args.model, as_json=args.json, stdout=stdout)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `padimd` console script; returns the process exit code."""
    parser = build_parser()
    stdout, stderr = sys.stdout, sys.stderr
    try:
        args = parser.parse_args(argv)
        return _run(args, parser, stdout, stderr)
    except SystemExit as exc:  # argparse's --help, --version and usage errors
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `padimd score ... | head`: the reader left; stop quietly. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:
        # Library errors (padim.errors.PadimError) are user-facing: a corrupt model file,
        # wrong weights, an unfitted model. Anything else is a bug and keeps its traceback.
        from padim.errors import PadimError

        if isinstance(exc, PadimError):
            print(f"{PROG}: error: {exc}", file=stderr)
            return EXIT_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())

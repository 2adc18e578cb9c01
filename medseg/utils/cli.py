"""Command-line conventions shared by the medseg-* tools: one-line errors for user mistakes."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

try:  # the training install; the runtime install has no OmegaConf
    from omegaconf.errors import OmegaConfBaseException
except ImportError:  # pragma: no cover - runtime install
    OmegaConfBaseException = ValueError  # type: ignore[misc,assignment]

T = TypeVar("T")
log = logging.getLogger("medseg.progress")

# Bad input, missing files, refused checkpoints, config mistakes: the user can fix these from one line.
USER_ERRORS = (ValueError, OSError, KeyError, TypeError, RuntimeError, OmegaConfBaseException)


# overrides that drive or log a run without changing what it trains
RUN_PLUMBING = ("ckpt_path=", "hydra.", "paths.", "callbacks.progress_bar=", "model.log_images=", "logger")


def run_cli(prog: str, debug: bool, action: Callable[[], T]) -> T:
    """Run ACTION; a user error prints `PROG: error: <one line>` and exits 2 (full traceback with DEBUG)."""
    if debug or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return action()
    try:
        return action()
    except USER_ERRORS as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None


def progress(items: Iterable[T], total: int, description: str, every: float = 30.0) -> Iterator[T]:
    """A rich bar in a terminal; elsewhere (logs, SLURM, CI) a line every EVERY seconds and at the end."""
    if sys.stderr.isatty() and importlib.util.find_spec("rich") is not None:
        from rich.progress import track

        yield from track(items, total=total, description=description)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every or done == total:
            rate = done / max(now - start, 1e-9)
            eta = (total - done) / rate if rate else 0.0
            log.info("%s: %d/%d (%.1f/s, %.0f s left)", description, done, total, rate, eta)
            last = now


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most LIMIT characters (library messages can hold tracebacks)."""
    return (str(exc).strip().splitlines() or [""])[0].rstrip(":")[:limit]


def one_line(exc: BaseException) -> str:
    """An exception as one line of text, its type named when the message alone would be unclear."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError | TypeError | RuntimeError) or not str(exc).strip():
        text = f"{type(exc).__name__}: {text}"
    return text


def add_tta_option(parser: argparse.ArgumentParser) -> None:
    """--tta, as medseg-eval, -predict and -export take it (default: the model's own views)."""
    parser.add_argument(
        "--tta",
        nargs="*",
        default=None,
        metavar="VIEW",
        help="test-time views, logits averaged: hflip, vflip, hvflip, scale<factor> such as scale1.25 (none: no TTA)",
    )


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """--tta and --keep-largest, as medseg-eval and medseg-predict take them (default: the model's own)."""
    add_tta_option(parser)
    parser.add_argument(
        "--keep-largest",
        nargs="*",
        default=None,
        type=_class_count,
        metavar="CLASS=K",
        help="keep the K largest components of CLASS and fill their holes (none given: no post-processing)",
    )


def inference_options(args: argparse.Namespace) -> dict:
    """Predictor keyword arguments from the parsed --tta / --keep-largest."""
    keep = None if args.keep_largest is None else dict(args.keep_largest)
    return dict(tta=args.tta, keep_largest=keep)


def _class_count(text: str) -> tuple[str, int]:
    name, _, k = text.partition("=")
    if not name or not k.isdigit():
        raise argparse.ArgumentTypeError(f"expected CLASS=K, e.g. lung=2, got {text!r}")
    return name, int(k)

"""Command-line conventions shared by the medseg-* tools: one-line errors for user mistakes."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")
log = logging.getLogger("medseg.progress")

# Bad input, missing files, refused checkpoints, config mistakes: the user can fix these from one line.
USER_ERRORS = (ValueError, OSError, KeyError, TypeError, RuntimeError, OmegaConfBaseException)


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
    if sys.stderr.isatty():
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


def one_line(exc: BaseException) -> str:
    """An exception as one line of text, its type named when the message alone would be unclear."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError | TypeError | RuntimeError) or not str(exc).strip():
        text = f"{type(exc).__name__}: {text}"
    return text

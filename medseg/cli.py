"""Command-line conventions shared by the medseg-* tools: one-line errors for user mistakes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

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


def one_line(exc: BaseException) -> str:
    """An exception as one line of text, its type named when the message alone would be unclear."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError | TypeError | RuntimeError) or not str(exc).strip():
        text = f"{type(exc).__name__}: {text}"
    return text

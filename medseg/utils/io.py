"""Atomic file output: write to a temporary sibling, then rename over the target."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to PATH; on success it replaces PATH, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError of its own
        if out_of_space(exc, path.parent):
            raise OSError(errno.ENOSPC, f"no space left on device: {path}") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def out_of_space(exc: BaseException, folder: Path) -> bool:
    """Whether EXC came from a full disk: ENOSPC, or a write error while FOLDER's file system has under 1 MiB free."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False

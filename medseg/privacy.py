"""Keyed pseudonyms: HMAC-SHA256 of identifiers under a secret that never leaves this machine.

The secret is `MEDSEG_SECRET` when set, else the key file `MEDSEG_KEY_FILE`
(default `~/.config/medseg/secret.key`), created once with 0600 permissions. Nothing that medseg
writes holds the secret, so a pseudonym cannot be reversed by enumerating candidate identifiers
without it, and two sites with different secrets produce unlinkable pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from functools import cache
from pathlib import Path, PurePosixPath

DEFAULT_KEY_FILE = "~/.config/medseg/secret.key"


def key_file() -> Path:
    """Where the local secret lives."""
    return Path(os.path.expanduser(os.environ.get("MEDSEG_KEY_FILE", DEFAULT_KEY_FILE)))


@cache
def _secret(env: str | None, path: str) -> bytes:
    if env:
        return env.encode()
    file = Path(path)
    if not file.is_file():
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".secret.", dir=file.parent)  # 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
            os.link(tmp, file)  # appears whole or not at all; never replaces an existing key
        except FileExistsError:  # another process made it first: use theirs
            pass
        finally:
            os.unlink(tmp)
    secret = file.read_text().strip().encode()
    if len(secret) < 16:
        raise ValueError(f"{file}: the pseudonymisation secret is shorter than 16 characters")
    return secret


def secret() -> bytes:
    """The local pseudonymisation secret (created on first use)."""
    return _secret(os.environ.get("MEDSEG_SECRET"), str(key_file()))


def pseudonym(value: str, length: int = 16) -> str:
    """Keyed pseudonym of an identifier: the first LENGTH hex digits of HMAC-SHA256(secret, value)."""
    return hmac.new(secret(), str(value).encode(), hashlib.sha256).hexdigest()[:length]


def pseudonymous_path(relative: str | os.PathLike) -> str:
    """A relative path with every component (folders and file stem) replaced by its pseudonym."""
    parts = PurePosixPath(Path(relative).as_posix()).parts
    return "/".join(pseudonym(p) for p in parts)

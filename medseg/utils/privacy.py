"""Keyed pseudonyms: HMAC-SHA256 of identifiers under a secret that never leaves this machine.

The secret is `MEDSEG_SECRET` when set, else the key file `MEDSEG_KEY_FILE`
(default `~/.config/medseg/secret.key`), created once with 0600 permissions. Nothing that medseg
writes holds the secret, so a pseudonym cannot be reversed by enumerating candidate identifiers
without it, and two sites with different secrets produce unlinkable pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from collections.abc import Sequence
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
    data = str(value).encode("utf-8", "surrogateescape")  # file names that are not UTF-8 keep their bytes
    return hmac.new(secret(), data, hashlib.sha256).hexdigest()[:length]


def pseudonymous_path(relative: str | os.PathLike) -> str:
    """A relative path with every component (folders and file stem) replaced by its pseudonym."""
    parts = PurePosixPath(Path(relative).as_posix()).parts
    return "/".join(pseudonym(p) for p in parts)


def output_name(path: Path, source: Path, keep_names: bool) -> str:
    """An image's output name: the keyed pseudonym of its path below SOURCE, or that path itself with KEEP_NAMES."""
    relative = path.relative_to(source) if source.is_dir() else Path(path.name)
    if keep_names:
        return relative.with_suffix("").as_posix().replace("/", "__")
    return pseudonym(relative.as_posix())


# Source folders whose files log lines may name: written to files, paths under them become pseudonyms.
_SOURCES: set[str] = set()
_DELIMITERS = frozenset(" \t\n:,;'\"()[]{}<>")


def register_source(root: str | os.PathLike) -> None:
    """Mark ROOT as holding patient data: file log lines name what lies under it by keyed pseudonym."""
    for form in (os.fspath(root), os.path.abspath(root), os.path.realpath(root)):
        if form.rstrip(os.sep):
            _SOURCES.add(form.rstrip(os.sep))


def redact(text: str) -> str:
    """TEXT with every path under a registered source written as SOURCE/<pseudonymous path>."""
    for root in sorted(_SOURCES, key=len, reverse=True):
        out, position = [], 0
        while (found := text.find(root + os.sep, position)) >= 0:
            if found and text[found - 1] not in _DELIMITERS:  # part of a longer path
                out.append(text[position : found + len(root)])
                position = found + len(root)
                continue
            start = found + len(root) + 1
            end = _path_end_from(text, found, start)
            out.append(text[position:start] + pseudonymous_path(text[start:end]))
            position = end
        text = "".join(out) + text[position:]
    return text


def _path_end_from(text: str, found: int, start: int) -> int:
    """End of the path that starts at FOUND (its part below the source starts at START)."""
    ends = [i for i in range(start + 1, len(text)) if text[i] in _DELIMITERS] + [len(text)]
    existing = [end for end in ends if os.path.lexists(text[found:end])]
    return existing[-1] if existing else ends[0]


class PseudonymousFormatter(logging.Formatter):
    """A log formatter for files (train.log): paths under registered sources become keyed pseudonyms."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as the parent formats it, redacted."""
        return redact(super().format(record))


def lookup(pseudonyms: Sequence[str], root: str | os.PathLike, tags: bool = False) -> dict[str, list[str]]:
    """The paths under ROOT (and with TAGS, the DICOM PatientID / series / instance UIDs) each pseudonym stands for.

    A pseudonym matches a path below ROOT (as outputs write it, whole or one component) or an identifier.
    """
    wanted: dict[str, list[str]] = {p: [] for p in pseudonyms}
    root = Path(root)
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        for candidate in {relative, Path(relative).with_suffix("").as_posix(), path.name}:
            for form in (pseudonym(candidate), pseudonymous_path(candidate)):
                if form in wanted and relative not in wanted[form]:
                    wanted[form].append(relative)
        if tags and path.is_file() and path.suffix.lower() == ".dcm":
            _match_tags(path, relative, wanted)
    return wanted


def _match_tags(path: Path, relative: str, wanted: dict[str, list[str]]) -> None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # not DICOM: nothing to match
        return
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = str(ds.get(keyword, "")).strip()
        if value and pseudonym(value) in wanted:
            wanted[pseudonym(value)].append(f"{keyword} {value} ({relative})")


def main(argv: Sequence[str] | None = None) -> None:
    """medseg-lookup: resolve pseudonyms back to files (and DICOM identifiers) on the machine holding the key."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="medseg-lookup", description=main.__doc__)
    parser.add_argument("pseudonym", nargs="+", help="pseudonyms as outputs and logs write them (a/b/c or one)")
    parser.add_argument("--root", type=Path, required=True, help="the data folder the outputs were made from")
    parser.add_argument("--tags", action="store_true", help="also match DICOM PatientID, study/series/SOP UIDs")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"medseg-lookup: error: {args.root}: not a folder", file=sys.stderr)
        raise SystemExit(2)
    found = lookup(args.pseudonym, args.root, args.tags)
    for name, matches in found.items():
        print(f"{name}: {', '.join(matches) if matches else 'not found under ' + str(args.root)}")
    if not any(found.values()):
        raise SystemExit(1)

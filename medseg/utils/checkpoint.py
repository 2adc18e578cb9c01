"""Checkpoints as data: weights-only loading, hyper-parameters checked against the registry, atomic saves."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from medseg.utils.cli import first_line
from medseg.utils.io import atomic_path
from medseg.utils.registry import UnsafeSpec, check_plain, lookup


class UnsafeCheckpoint(ValueError):
    """A checkpoint asks for code outside the registry, holds an interpolation, or comes from where it may not."""


def is_url(path: str | os.PathLike) -> bool:
    """Whether PATH names a remote location (scheme://...)."""
    return "://" in str(path)


def allowed_target(name: str) -> bool:
    """True for the names `medseg.utils.registry` builds: this package's networks and losses, optimizers and LR
    schedulers of torch and medseg.schedulers (looked up, never called)."""
    return lookup(name) is not None


def check_hyper_parameters(tree: Any, source: str, where: str) -> None:
    """Raise UnsafeCheckpoint unless TREE is plain data with allowed `_target_` names and no interpolation."""
    try:
        check_plain(tree, where)
    except UnsafeSpec as exc:
        raise UnsafeCheckpoint(f"{source}: {exc}") from None


def refuse_remote(path: str | os.PathLike, allow_remote: bool) -> None:
    """Raise UnsafeCheckpoint for a remote PATH (scheme://...) unless ALLOW_REMOTE."""
    if is_url(path) and not allow_remote:
        raise UnsafeCheckpoint(f"{path}: refused: remote checkpoint (set allow_remote_checkpoints=true to load it)")


def load_checkpoint(path: str | os.PathLike, allow_remote: bool = False, lightning: bool = True) -> dict:
    """A checkpoint loaded weights-only and validated: no pickles, no code named in its hyper-parameters.

    With LIGHTNING, it must be a Lightning checkpoint (a state_dict and hyper-parameters).
    """
    refuse_remote(path, allow_remote)
    if not is_url(path) and not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        if is_url(path):
            import fsspec

            with fsspec.open(str(path), "rb") as handle:
                checkpoint = torch.load(handle, map_location="cpu", weights_only=True)
        else:
            checkpoint = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle payloads, truncation, other formats
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(checkpoint, dict) or (lightning and not isinstance(checkpoint.get("state_dict"), Mapping)):
        raise ValueError(f"{path}: not a Lightning checkpoint (no state_dict)")
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        check_hyper_parameters(checkpoint.get(key, {}), str(path), key)
    return checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O: saves replace the file atomically; loads are weights-only and validated."""

    def __init__(self, allow_remote: bool = False) -> None:
        self.allow_remote = allow_remote

    def save_checkpoint(self, checkpoint: dict, path: str | os.PathLike, storage_options: Any = None) -> None:
        """Write to a temporary sibling, then rename over PATH: a kill never leaves a truncated checkpoint."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None):
        """Load with load_checkpoint (weights-only, allow-listed hyper-parameters; DDP-spawn weight files too)."""
        return load_checkpoint(path, self.allow_remote, lightning=False)

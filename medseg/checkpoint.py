"""Checkpoints as data: weights-only loading, an allow-list for what their hyper-parameters may name, atomic saves."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch.optim.lr_scheduler import LRScheduler

from medseg import schedulers
from medseg.io import atomic_path

# Classes a checkpoint's hyper-parameters may name with `_target_`: this package's networks and losses.
# Optimizers of torch.optim and LR schedulers of torch.optim.lr_scheduler and medseg.schedulers are allowed
# by type (see allowed_target).
ALLOWED_TARGETS = frozenset(
    {
        "medseg.models.PSPNet",
        "medseg.models.pspnet.PSPNet",
        "medseg.losses.DiceLoss",
        "medseg.losses.FocalLoss",
        "medseg.losses.HybridLoss",
    }
)

BY_TYPE: dict[str, tuple[ModuleType, type]] = {
    "torch.optim": (torch.optim, torch.optim.Optimizer),
    "torch.optim.lr_scheduler": (torch.optim.lr_scheduler, LRScheduler),
    "medseg.schedulers": (schedulers, LRScheduler),
}


class UnsafeCheckpoint(ValueError):
    """A checkpoint asks for code outside the allow-list, or comes from where it may not."""


def is_url(path: str | os.PathLike) -> bool:
    """Whether PATH names a remote location (scheme://...)."""
    return "://" in str(path)


def allowed_target(name: str) -> bool:
    """True for the allow-listed classes and for optimizers and LR schedulers of torch and medseg.schedulers
    (looked up, never called)."""
    if name in ALLOWED_TARGETS:
        return True
    module_name, _, attr = name.rpartition(".")
    if module_name not in BY_TYPE or attr.startswith("_"):
        return False
    module, base = BY_TYPE[module_name]
    value = inspect.getattr_static(module, attr, None)
    return inspect.isclass(value) and issubclass(value, base)


def check_targets(tree: Any, source: str, where: str = "") -> None:
    """Raise UnsafeCheckpoint if any `_target_` in TREE (nested dicts and lists) is not allowed."""
    if isinstance(tree, Mapping):
        target = tree.get("_target_")
        if target is not None and not (isinstance(target, str) and allowed_target(target)):
            raise UnsafeCheckpoint(
                f"{source}: refused: {where or 'hyper-parameters'} name {target!r}, which is not a medseg network, "
                "loss, torch optimizer or LR scheduler"
            )
        for key, value in tree.items():
            check_targets(value, source, f"{where}.{key}" if where else str(key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            check_targets(value, source, f"{where}[{i}]")


def load_checkpoint(path: str | os.PathLike, allow_remote: bool = False, lightning: bool = True) -> dict:
    """A checkpoint loaded weights-only and validated: no pickles, no code named in its hyper-parameters.

    With LIGHTNING, it must be a Lightning checkpoint (a state_dict and hyper-parameters).
    """
    if is_url(path) and not allow_remote:
        raise UnsafeCheckpoint(f"{path}: refused: remote checkpoint (set allow_remote_checkpoints=true to load it)")
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first[:200]})") from None
    if not isinstance(checkpoint, dict) or (lightning and not isinstance(checkpoint.get("state_dict"), Mapping)):
        raise ValueError(f"{path}: not a Lightning checkpoint (no state_dict)")
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        check_targets(checkpoint.get(key, {}), str(path), key)
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

"""PyTorch networks from checkpoints, built through the registry from their plain hyper-parameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from medseg.data.augment import size_pair
from medseg.deploy.info import ModelInfo
from medseg.utils.checkpoint import load_checkpoint
from medseg.utils.registry import build

NET_PREFIX = "net."  # the network's keys in a SegmentationModule state dict
SHARED = ("class_names", "in_channels", "context_slices", "spacing", "image_size", "size_policy", "window")
SHARED += ("normalize", "ct_statistics")  # type: ignore[assignment]
DATA_STATES = ("SegmentationDataModule", "StreamDataModule")  # where Lightning keeps a data module's state_dict


def checkpoint_info(checkpoint: dict) -> ModelInfo:
    """ModelInfo from a Lightning checkpoint's model and data module hyper-parameters."""
    data, hparams = checkpoint.get("datamodule_hyper_parameters", {}), checkpoint["hyper_parameters"]
    state: dict = next((checkpoint[k] for k in DATA_STATES if isinstance(checkpoint.get(k), dict)), {})
    intensity = state.get("intensity") or {"normalize": "window", "ct": None}
    return ModelInfo(
        class_names=list(hparams["class_names"]),
        in_channels=int(data.get("in_channels", hparams["net"].get("in_channels", 1))),
        image_size=list(size_pair(data.get("image_size", 256))),
        size_policy=data.get("size_policy", "stretch"),
        window=data.get("window"),
        context_slices=int(data.get("context_slices") or 0),
        spacing=[float(v) for v in data["spacing"]] if data.get("spacing") else None,
        normalize=str(intensity["normalize"]),
        ct_statistics=dict(intensity["ct"]) if intensity.get("ct") else None,
        tta=list(hparams.get("tta") or []),
        keep_largest=dict(hparams["keep_largest"]) if hparams.get("keep_largest") else None,
    )


def load_checkpoint_net(path: str | Path) -> tuple[nn.Module, ModelInfo]:
    """The network of a checkpoint (weights-only load, registry build), in eval mode, and its ModelInfo."""
    checkpoint = load_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    info = checkpoint_info(checkpoint)
    spec = dict(hparams.get("net") or {})
    for key, value in (("pretrained", False), ("weights_path", None)):  # the state dict holds every weight
        if key in spec:
            spec[key] = value
    try:
        net = build(spec, "hyper_parameters.net", num_classes=len(info.class_names))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    weights = {k[len(NET_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(NET_PREFIX)}
    result = net.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: weights do not fit its network (missing {result.missing_keys[:3]})")
    return net.eval(), info


def load_members(paths: Sequence[str | Path]) -> tuple[list[nn.Module], ModelInfo]:
    """The networks of one or several checkpoints and their common ModelInfo; raise if they do not agree."""
    nets, infos = zip(*(load_checkpoint_net(p) for p in paths), strict=True)
    first = infos[0]
    for path, info in zip(paths[1:], infos[1:], strict=True):
        for key in SHARED:
            if getattr(info, key) != getattr(first, key):
                raise ValueError(
                    f"{path}: {key} {getattr(info, key)!r} differs from {paths[0]}'s {getattr(first, key)!r}; "
                    "ensemble members must share classes and preprocessing"
                )
    return list(nets), dataclasses.replace(first, members=len(nets))

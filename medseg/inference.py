"""Load a checkpoint or ONNX model with its preprocessing metadata and segment images at any size."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from medseg.checkpoint import load_checkpoint
from medseg.data.augment import size_pair
from medseg.models.averaging import check_tta, inference_net, tta_logits
from medseg.postprocess import class_indices, keep_largest
from medseg.registry import check_arguments

METADATA_KEY = "medseg"


@dataclass
class ModelInfo:
    """Everything a consumer needs to feed the model: classes, channels, size policy and window."""

    class_names: list[str]
    in_channels: int
    image_size: list[int]
    size_policy: str = "stretch"
    window: str | list[float] | None = None
    input: str = "float32 [B, C, H, W] in [0, 1]: modality LUT, VOI window, MONOCHROME1 inverted"
    output: str = "float32 logits [B, K, H, W]; argmax over K gives class indices"
    tta: list[str] = field(default_factory=list)  # test-time views (ONNX: averaged inside the graph)
    keep_largest: dict[str, int] | None = None  # post-processing: largest components kept per class
    members: int = 1  # checkpoints ensembled (softmax averaged; the output is then its logarithm)

    def to_json(self) -> str:
        """Serialise for ONNX metadata."""
        return json.dumps(asdict(self))


def checkpoint_info(checkpoint: dict) -> ModelInfo:
    """ModelInfo from a Lightning checkpoint's model and data module hyper-parameters."""
    data, hparams = checkpoint.get("datamodule_hyper_parameters", {}), checkpoint["hyper_parameters"]
    return ModelInfo(
        class_names=list(hparams["class_names"]),
        in_channels=int(data.get("in_channels", hparams["net"].get("in_channels", 1))),
        image_size=list(size_pair(data.get("image_size", 256))),
        size_policy=data.get("size_policy", "stretch"),
        window=data.get("window"),
        tta=list(hparams.get("tta") or []),
        keep_largest=dict(hparams["keep_largest"]) if hparams.get("keep_largest") else None,
    )


def load_checkpoint_module(path: str | Path):
    """The SegmentationModule of a checkpoint (weights-only load), in eval mode, and its ModelInfo."""
    from medseg.module import SegmentationModule

    checkpoint = load_checkpoint(path)
    hparams = dict(checkpoint["hyper_parameters"])
    net = dict(hparams.get("net") or {})
    for key, value in (("pretrained", False), ("weights_path", None)):  # the state dict holds every weight
        if key in net:
            net[key] = value
    try:
        check_arguments(SegmentationModule, {**hparams, "net": net}, "hyper_parameters")
        module = SegmentationModule(**{**hparams, "net": net})
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return module.eval(), checkpoint_info(checkpoint)


def load_members(paths: Sequence[str | Path]) -> tuple[list, ModelInfo]:
    """The modules of one or several checkpoints and their common ModelInfo; raise if they do not agree."""
    modules, infos = zip(*(load_checkpoint_module(p) for p in paths), strict=True)
    first = infos[0]
    for path, info in zip(paths[1:], infos[1:], strict=True):
        for key in ("class_names", "in_channels", "image_size", "size_policy", "window"):
            if getattr(info, key) != getattr(first, key):
                raise ValueError(
                    f"{path}: {key} {getattr(info, key)!r} differs from {paths[0]}'s {getattr(first, key)!r}; "
                    "ensemble members must share classes and preprocessing"
                )
    first.members = len(modules)
    return list(modules), first


class Predictor:
    """Runs .ckpt checkpoints (PyTorch; several are ensembled) or one .onnx model (ONNX Runtime) on float32
    [B, C, H, W] batches, with test-time views and mask post-processing.

    Args:
        path: a .onnx file, a .ckpt file, or several .ckpt files whose softmax outputs are averaged.
        threads: ONNX Runtime intra-op threads.
        tta: test-time views (e.g. ["hflip"], ["scale1.25"]); None: the model's own setting.
        keep_largest: {class name: k} components to keep per class; None: the model's own, {}: none.
    """

    def __init__(
        self,
        path: str | Path | Sequence[str | Path],
        threads: int | None = None,
        tta: Sequence[str] | None = None,
        keep_largest: Mapping[str, int] | None = None,
    ) -> None:
        paths = [Path(p) for p in ([path] if isinstance(path, str | Path) else path)]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"model not found: {p}")
        self.path = paths[0]
        requested = None if tta is None else check_tta(tta)
        if self.path.suffix == ".onnx":
            if len(paths) > 1:
                raise ValueError(f"{paths[1]}: ensembles are built from .ckpt files; export them into one ONNX model")
            self.session, self.info = _onnx_session(self.path, threads)
            baked, self.net = self.info.tta, self._run_session
            self.info.tta = baked if requested is None else requested
            self.extra_tta = [name for name in self.info.tta if name not in baked]  # views the graph lacks
        else:
            self.session = None
            modules, self.info = load_members(paths)
            self.info.tta = self.info.tta if requested is None else requested
            self.net, self.extra_tta = inference_net(modules, self.info.tta), []  # type: ignore[assignment]
        if keep_largest is not None:
            self.info.keep_largest = dict(keep_largest) or None
        self.keep = class_indices(self.info.keep_largest, self.info.class_names)

    def _run_session(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.session.get_inputs()[0].name: x.numpy()})[0])

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits [B, K, H, W] for images [B, C, H, W] (view-averaged, ensembled as configured)."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.inference_mode():
            return tta_logits(self.net, x, self.extra_tta).numpy()

    def segment(self, image: np.ndarray, policy: str = "resize", overlap: float = 0.5) -> np.ndarray:
        """Class-index mask [H, W] for one image [H, W, C] in [0, 1], at the image's own resolution."""
        h, w = image.shape[:2]
        if policy == "resize":
            th, tw = self.info.image_size
            resized = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA).reshape(th, tw, -1)
            logits = self.logits(resized.transpose(2, 0, 1)[None])[0]
            logits = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in logits])
        elif policy == "sliding":
            logits = self._sliding(image, overlap)
        else:
            raise ValueError(f"unknown size policy {policy!r}; choose 'resize' or 'sliding'")
        mask = logits.argmax(0).astype(np.uint8)
        return keep_largest(mask, self.keep) if self.keep else mask

    def _sliding(self, image: np.ndarray, overlap: float) -> np.ndarray:
        """Average logits of training-size windows tiled over the image at native resolution."""
        th, tw = self.info.image_size
        h, w = image.shape[:2]
        ph, pw = max(h, th), max(w, tw)
        padded = np.zeros((ph, pw, image.shape[2]), np.float32)
        padded[:h, :w] = image
        total = np.zeros((len(self.info.class_names), ph, pw), np.float32)
        count = np.zeros((ph, pw), np.float32)
        sy, sx = max(1, int(th * (1 - overlap))), max(1, int(tw * (1 - overlap)))
        ys = sorted({*range(0, ph - th + 1, sy), ph - th})
        xs = sorted({*range(0, pw - tw + 1, sx), pw - tw})
        for y in ys:
            for x in xs:
                tile = padded[y : y + th, x : x + tw].transpose(2, 0, 1)[None]
                total[:, y : y + th, x : x + tw] += self.logits(tile)[0]
                count[y : y + th, x : x + tw] += 1
        return (total / count)[:, :h, :w]


def _onnx_session(path: Path, threads: int | None):
    """An ONNX Runtime CPU session and the model's ModelInfo from its metadata."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # not ONNX, truncated, unsupported operators
        message = " ".join(str(exc).split())[:200]
        raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {message})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ValueError(f"{path}: no '{METADATA_KEY}' metadata; export it with medseg-export")
    return session, ModelInfo(**json.loads(meta[METADATA_KEY]))

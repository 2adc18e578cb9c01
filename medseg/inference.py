"""Load a checkpoint or ONNX model with its preprocessing metadata and segment images at any size."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from medseg.checkpoint import load_checkpoint

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

    def to_json(self) -> str:
        """Serialise for ONNX metadata."""
        return json.dumps(asdict(self))


def checkpoint_info(checkpoint: dict) -> ModelInfo:
    """ModelInfo from a Lightning checkpoint's model and data module hyper-parameters."""
    data = checkpoint.get("datamodule_hyper_parameters", {})
    size = data.get("image_size", 256)
    return ModelInfo(
        class_names=list(checkpoint["hyper_parameters"]["class_names"]),
        in_channels=int(data.get("in_channels", checkpoint["hyper_parameters"]["net"].get("in_channels", 1))),
        image_size=[size, size] if isinstance(size, int) else list(size),
        size_policy=data.get("size_policy", "stretch"),
        window=data.get("window"),
    )


def load_checkpoint_module(path: str | Path):
    """The SegmentationModule of a checkpoint (weights-only load), in eval mode, and its ModelInfo."""
    from medseg.module import SegmentationModule

    checkpoint = load_checkpoint(path)
    module = SegmentationModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return module.eval(), checkpoint_info(checkpoint)


class Predictor:
    """Runs a .ckpt (PyTorch) or .onnx (ONNX Runtime) model on float32 [B, C, H, W] batches."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model not found: {self.path}")
        if self.path.suffix == ".onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            try:
                self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # not ONNX, truncated, unsupported operators
                message = " ".join(str(exc).split())[:200]
                raise ValueError(f"{self.path}: not a readable ONNX model ({type(exc).__name__}: {message})") from None
            meta = self.session.get_modelmeta().custom_metadata_map
            if METADATA_KEY not in meta:
                raise ValueError(f"{self.path}: no '{METADATA_KEY}' metadata; export it with medseg-export")
            self.info = ModelInfo(**json.loads(meta[METADATA_KEY]))
            self.module = None
        else:
            self.module, self.info = load_checkpoint_module(self.path)
            self.session = None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits [B, K, H, W] for images [B, C, H, W]."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.session is not None:
            return self.session.run(None, {self.session.get_inputs()[0].name: batch})[0]
        with torch.inference_mode():
            return self.module(torch.from_numpy(batch)).numpy()

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
        return logits.argmax(0).astype(np.uint8)

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

"""Segment images with an ONNX model (ONNX Runtime and numpy: no torch) or .ckpt checkpoints (PyTorch, lazily)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from medseg.data.context import stack_images, stack_indices
from medseg.data.intensity import Intensity
from medseg.data.sizing import fit_image, placement, restore
from medseg.data.spacing import resample_labels, to_spacing
from medseg.deploy.info import METADATA_KEY, ModelInfo
from medseg.deploy.views import resolve_tta
from medseg.postprocess import class_indices, keep_largest
from medseg.utils.cli import first_line

TRAIN_EXTRA = "pip install 'medseg[train]'"


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
        if self.path.suffix == ".onnx":
            if len(paths) > 1:
                raise ValueError(f"{paths[1]}: ensembles are built from .ckpt files; export them into one ONNX model")
            self.session, info = _onnx_session(self.path, threads)
            try:
                views = resolve_tta(info.tta, tta, baked=info.tta)
            except ValueError as exc:
                raise ValueError(f"{self.path}: {exc}") from None
            self._input_name = self.session.get_inputs()[0].name
            self._run = self._run_session
        else:
            self.session = None
            self._run, info, views = _checkpoint_runner(paths, tta)
        keep = info.keep_largest if keep_largest is None else (dict(keep_largest) or None)
        self.info = replace(info, tta=views, keep_largest=keep)
        self.intensity = Intensity.of_model(info.normalize, info.ct_statistics)  # applied by the callers' decoding
        self.keep = class_indices(self.info.keep_largest, self.info.class_names)

    def _run_session(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input_name: batch})[0]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits [B, K, H, W] for images [B, C, H, W] (view-averaged, ensembled as configured)."""
        return self._run(np.ascontiguousarray(batch, dtype=np.float32))

    def segment(
        self, image: np.ndarray, policy: str = "resize", overlap: float = 0.5, spacing: Sequence[float] | None = None
    ) -> np.ndarray:
        """Class-index mask [H, W] for one image [H, W, C] in [0, 1], at the image's own resolution. A model
        trained at a pixel spacing gets the image resampled to it (SPACING: the image's [row_mm, col_mm]) and
        its mask mapped back; RESIZE fits it to the training size by the model's size policy (stretch or letterbox) and
        maps the logits back exactly; one trained with size_policy crop is applied by sliding window."""
        source = image.shape[:2]
        image, _ = to_spacing(image, None, spacing, self.info.spacing, "the input image")
        if self.info.size_policy == "crop":
            policy = "sliding"
        if policy == "resize":  # the training size policy (stretch or letterbox), inverted exactly
            where = placement(image.shape, self.info.image_size, self.info.size_policy)
            fitted = fit_image(image, self.info.image_size, self.info.size_policy)
            logits = restore(self.logits(fitted.reshape(*fitted.shape[:2], -1).transpose(2, 0, 1)[None])[0], where)
        elif policy == "sliding":
            logits = self._sliding(image, overlap)
        else:
            raise ValueError(f"unknown size policy {policy!r}; choose 'resize' or 'sliding'")
        mask = logits.argmax(0).astype(np.uint8)
        if mask.shape != source:
            mask = resample_labels(mask, source)
        return keep_largest(mask, self.keep) if self.keep else mask

    def segment_series(
        self, images: Sequence[np.ndarray], policy: str = "resize", spacings: Sequence | None = None
    ) -> list[np.ndarray]:
        """Class-index masks of the slices of one series in order ([H, W, C] each; one 2-D image is a series of
        one), each fed with its context stack when the model takes neighbouring slices; SPACINGS: each slice's
        pixel spacing."""
        stacks = stack_indices(len(images), self.info.context_slices)
        spacings = spacings or [None] * len(images)
        return [self.segment(stack_images(images, s), policy, spacing=spacings[z]) for z, s in enumerate(stacks)]

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


def _checkpoint_runner(paths: Sequence[Path], tta: Sequence[str] | None):
    """(numpy batch -> logits, ModelInfo, views) for .ckpt members: PyTorch, needed only here."""
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"{paths[0]}: a PyTorch checkpoint needs the training install ({TRAIN_EXTRA}); "
            "this install runs .onnx models (medseg-export makes one)"
        ) from None
    from medseg.deploy.averaging import inference_net
    from medseg.deploy.members import load_members

    nets, info = load_members(paths)
    views = resolve_tta(info.tta, tta)
    net = inference_net(nets, views)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(batch)).numpy()

    return run, info, views


def _onnx_session(path: Path, threads: int | None):
    """An ONNX Runtime CPU session and the model's ModelInfo from its metadata."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # not ONNX, truncated, unsupported operators
        raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {first_line(exc)})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ValueError(f"{path}: no '{METADATA_KEY}' metadata; export it with medseg-export")
    return session, ModelInfo(**json.loads(meta[METADATA_KEY]))

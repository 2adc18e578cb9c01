"""INT8 static quantization (QDQ, per-channel weights) with ONNX Runtime, accepted only within a Dice tolerance."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from medseg.deploy.predictor import Predictor
from medseg.evaluation.scores import SplitScores
from medseg.utils.checkpoint import load_checkpoint
from medseg.utils.io import atomic_path

log = logging.getLogger(__name__)


@dataclass
class QuantReport:
    """Outcome of quantizing one model."""

    path: Path
    fp32_dice: float
    int8_dice: float
    fp32_bytes: int
    int8_bytes: int
    tolerance: float

    @property
    def drop(self) -> float:
        """Validation Dice lost by quantization."""
        return self.fp32_dice - self.int8_dice

    @property
    def accepted(self) -> bool:
        """Whether the Dice drop is within tolerance."""
        return self.drop <= self.tolerance

    def summary(self) -> str:
        """One line for the console."""
        verdict = (
            f"wrote {self.path}"
            if self.accepted
            else f"refused: Dice drop {self.drop:.4f} > tolerance {self.tolerance}"
        )
        return (
            f"INT8 {verdict}; val Dice FP32 {self.fp32_dice:.4f} INT8 {self.int8_dice:.4f} "
            f"(drop {self.drop:+.4f}); size {self.fp32_bytes / 1e6:.1f} MB -> {self.int8_bytes / 1e6:.1f} MB"
        )


class _BatchReader(CalibrationDataReader):
    """Feeds calibration batches to ONNX Runtime's calibrator."""

    def __init__(self, batches: list[np.ndarray], input_name: str) -> None:
        self._items = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self._items, None)


def validation_batches(checkpoint: str | Path, data_root: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(images, masks) batches of the checkpoint's validation split, rebuilt from its data settings."""
    from medseg.data.datamodule import SegmentationDataModule
    from medseg.data.stream import StreamDataModule

    state = load_checkpoint(checkpoint)
    hparams = dict(state["datamodule_hyper_parameters"])
    hparams.pop("cache_dir", None)  # a checkpoint names no folder to write to: this machine's defaults
    if data_root:
        hparams["root"] = data_root
    streamed = "layout" not in hparams  # trained with data=stream from a prepared folder
    datamodule: StreamDataModule | SegmentationDataModule
    if streamed:
        datamodule = StreamDataModule(**hparams)
    else:
        cache = os.environ.get("MEDSEG_CACHE", "~/.cache/medseg")
        datamodule = SegmentationDataModule(**hparams | {"cache_dir": cache, "split_file": None, "decode_cache": None})
    datamodule.setup("validate")
    return [(b["image"].numpy(), b["mask"].numpy()) for b in datamodule.val_dataloader()]


def mean_dice(predictor: Predictor, batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Whole-split mean foreground Dice of PREDICTOR over the batches (the test step's score)."""
    scores = SplitScores(predictor.info.class_names)
    for images, masks in batches:
        scores.update(predictor.logits(images).argmax(1), masks)
    return scores.compute()["dice_mean"]


def quantize_onnx(fp32: Path, out: Path, calibration: list[np.ndarray]) -> Path:
    """Statically quantize to INT8 (QDQ, per-channel weights, uint8 activations; stem and classifier FP32)."""
    model = onnx.load(str(fp32))
    meta = {p.key: p.value for p in model.metadata_props}
    with tempfile.TemporaryDirectory(dir=out.parent) as work, atomic_path(out) as tmp:
        pre = Path(work) / "preprocessed.onnx"
        quant_pre_process(str(fp32), str(pre))
        convs = [node.name for node in onnx.load(str(pre)).graph.node if node.op_type == "Conv"]
        quantize_static(
            str(pre),
            str(tmp),
            _BatchReader(calibration, model.graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=[convs[0], convs[-1]],  # stem and classifier stay FP32: they decide the masks' edges
        )
        quantized = onnx.load(str(tmp))
        onnx.helper.set_model_props(quantized, meta)
        onnx.save(quantized, str(tmp))
    return out


def quantize_checkpoint_model(
    checkpoint: str | Path,
    fp32: str | Path,
    tolerance: float = 0.02,
    calibration_batches: int = 8,
    data_root: str | None = None,
    out: str | Path | None = None,
) -> QuantReport:
    """Quantize an exported model with validation batches; keep it only if Dice drops <= TOLERANCE."""
    fp32 = Path(fp32)
    out = Path(out) if out else fp32.with_suffix(".int8.onnx")
    batches = validation_batches(checkpoint, data_root)
    candidate = out.with_name(f".candidate-{out.name}")
    quantize_onnx(fp32, candidate, [images for images, _ in batches[:calibration_batches]])
    report = QuantReport(
        path=out,
        fp32_dice=mean_dice(Predictor(fp32), batches),
        int8_dice=mean_dice(Predictor(candidate), batches),
        fp32_bytes=fp32.stat().st_size,
        int8_bytes=candidate.stat().st_size,
        tolerance=tolerance,
    )
    if report.accepted:
        candidate.replace(out)
    else:
        candidate.unlink()
    log.info(report.summary())
    return report

"""ONNX export with dynamic batch, height and width, checked against ONNX Runtime; INT8 on request.

medseg-export CKPT [CKPT ...] --out model.onnx [--tta hflip] [--int8 [--tolerance 0.02]]

Several checkpoints become one graph that averages their softmax; test-time views (flips, scales) are
averaged inside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from medseg.deploy.averaging import inference_net
from medseg.deploy.info import METADATA_KEY, ModelInfo
from medseg.deploy.members import load_members
from medseg.deploy.predictor import Predictor
from medseg.deploy.views import resolve_tta
from medseg.utils.cli import add_tta_option, run_cli
from medseg.utils.io import atomic_path

log = logging.getLogger(__name__)


def parity_sizes(info: ModelInfo) -> list[tuple[int, int, int]]:
    """(batch, H, W) checks: the training size, a size not a multiple of 32, one larger than training."""
    h, w = info.image_size
    return [(1, h, w), (2, h + 13, w - 7 if w > 64 else w + 21), (1, int(h * 1.5) + 3, int(w * 1.25) + 1)]


def check_parity(net: torch.nn.Module, onnx_path: Path, info: ModelInfo, atol: float = 1e-4) -> list[float]:
    """Run ONNX Runtime and PyTorch at several sizes; raise if logits differ by more than ATOL."""
    predictor = Predictor(onnx_path)
    gen = torch.Generator().manual_seed(0)
    errors = []
    for b, h, w in parity_sizes(info):
        x = torch.rand(b, info.input_channels, h, w, generator=gen)
        with torch.inference_mode():
            ref = net(x).numpy()
        out = predictor.logits(x.numpy())
        if out.shape != ref.shape:
            raise RuntimeError(f"{onnx_path}: ONNX output shape {out.shape} != PyTorch {ref.shape} at {h}x{w}")
        errors.append(float(np.abs(out - ref).max()))
        if errors[-1] > atol:
            raise RuntimeError(f"{onnx_path}: ONNX Runtime differs from PyTorch by {errors[-1]:.2e} at {b}x{h}x{w}")
    return errors


def export_net(net: torch.nn.Module, info: ModelInfo, out: str | Path, opset: int = 18, optimize: bool = True) -> Path:
    """Export NET with dynamic batch/height/width and INFO as metadata; returns the written path.

    OPTIMIZE runs onnxscript's graph optimizer (about 1.4x faster CPU inference for one network); it is
    switched off for ensembles, whose graphs it takes many minutes over (ONNX Runtime still optimises them
    when a session loads)."""
    out = Path(out)
    net = net.eval()
    h, w = info.image_size
    example = torch.rand(2, info.input_channels, h, w)
    dims = {
        0: torch.export.Dim("batch", max=4096),
        2: torch.export.Dim("height", min=32, max=8192),
        3: torch.export.Dim("width", min=32, max=8192),
    }
    program = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes={"x": dims},
        optimize=optimize,
        verbose=False,
    )
    model = program.model_proto
    onnx.helper.set_model_props(model, {METADATA_KEY: info.to_json()})
    model.producer_name = "medseg"
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return out


def export_checkpoint(
    checkpoint: str | Path | Sequence[str | Path],
    out: str | Path,
    atol: float = 1e-4,
    tta: Sequence[str] | None = None,
) -> tuple[Path, list[float]]:
    """Export one checkpoint's network, or the ensemble of several, to ONNX (TTA views inside the graph,
    None: the checkpoints' own setting) and verify it against PyTorch; returns (path, max errors)."""
    paths = [checkpoint] if isinstance(checkpoint, str | Path) else list(checkpoint)
    nets, info = load_members(paths)
    info = dataclasses.replace(info, tta=resolve_tta(info.tta, tta))
    net = inference_net(nets, info.tta).eval()
    path = export_net(net, info, out, optimize=len(nets) == 1)
    try:
        errors = check_parity(net, path, info, atol)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    return path, errors


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="medseg-export", description="Export a medseg checkpoint to ONNX.")
    parser.add_argument("checkpoint", type=Path, nargs="+", help="one checkpoint, or several to ensemble")
    parser.add_argument("--out", type=Path, required=True, help="output .onnx file")
    parser.add_argument("--atol", type=float, default=1e-4, help="max |logit| difference ORT vs PyTorch")
    add_tta_option(parser)  # views averaged inside the graph
    parser.add_argument("--int8", action="store_true", help="also write an INT8 model (<out>.int8.onnx)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="max validation Dice drop for INT8")
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--data-root", default=None, help="data root for calibration (default: the training data)")
    parser.add_argument("--debug", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path, errors = run_cli(
        "medseg-export", args.debug, lambda: export_checkpoint(args.checkpoint, args.out, args.atol, args.tta)
    )
    print(f"wrote {path}; ONNX Runtime vs PyTorch max |diff| per size: {', '.join(f'{e:.1e}' for e in errors)}")
    if args.int8:
        from medseg.deploy.quantize import quantize_checkpoint_model

        report = run_cli(
            "medseg-export",
            args.debug,
            lambda: quantize_checkpoint_model(
                args.checkpoint[0], path, args.tolerance, args.calibration_batches, args.data_root
            ),
        )
        print(report.summary())
        if not report.accepted:
            raise SystemExit(1)


if __name__ == "__main__":
    main()

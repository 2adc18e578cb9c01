"""ONNX export with dynamic H/W for every backbone, INT8 quantization, and prediction to DICOM SEG."""

from __future__ import annotations

import shutil

import highdicom as hd
import numpy as np
import onnx
import pydicom
import pytest
from PIL import Image

from medseg.deploy.export import check_parity, export_net
from medseg.deploy.export import main as export_main
from medseg.deploy.info import ModelInfo
from medseg.deploy.predict import predict
from medseg.deploy.predictor import Predictor
from medseg.deploy.quantize import quantize_checkpoint_model, validation_batches
from medseg.deploy.views import resolve_tta
from medseg.models import PSPNet
from medseg.models.encoder import BACKBONES


@pytest.mark.slow  # the fast tier exports mobilenetv3 through the CLI (demo_onnx), parity-checked at three sizes
@pytest.mark.parametrize("backbone", [b for b in BACKBONES if b != "mobilenetv3"])
def test_every_backbone_exports_with_dynamic_height_and_width(backbone, tmp_path):
    net = PSPNet(backbone, in_channels=1, num_classes=3, decoder_channels=32).eval()
    info = ModelInfo(class_names=["bg", "a", "b"], in_channels=1, image_size=[64, 64])
    path = export_net(net, info, tmp_path / f"{backbone}.onnx")
    errors = check_parity(net, path, info, atol=1e-4)
    assert len(errors) == 3 and max(errors) <= 1e-4
    assert _has_dynamic_batch_height_width(path)


def _has_dynamic_batch_height_width(path) -> bool:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return all(d.dim_param for d in (dims[0], dims[2], dims[3]))  # symbolic, not fixed


@pytest.fixture(scope="session")
def demo_onnx(demo_checkpoint, tmp_path_factory):
    """The demo checkpoint exported once through the CLI (parity-checked at three sizes)."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_main([str(demo_checkpoint), "--out", str(out)])
    return out


def test_export_cli_writes_metadata(demo_onnx):
    info = Predictor(demo_onnx).info
    assert info.class_names == ["background", "organ", "lesion"]
    assert info.in_channels == 1 and info.image_size == [64, 64] and info.size_policy == "stretch"
    assert _has_dynamic_batch_height_width(demo_onnx)


def test_views_other_than_the_graphs_are_refused_in_one_line(demo_onnx):
    assert Predictor(demo_onnx).info.tta == [] and Predictor(demo_onnx, tta=[]).info.tta == []
    with pytest.raises(ValueError, match=r"averages no test-time views, not \['hflip'\]; export it again"):
        Predictor(demo_onnx, tta=["hflip"])
    assert resolve_tta(["hflip"], None) == ["hflip"] and resolve_tta(["hflip"], []) == []  # checkpoints: any
    with pytest.raises(ValueError, match=r"averages \['hflip'\] test-time views, not none"):
        resolve_tta(["hflip"], [], baked=["hflip"])


def _is_quantized_conv(model: onnx.ModelProto) -> bool:
    producers = {out: node for node in model.graph.node for out in node.output}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "QLinearConv")]
    if any(n.op_type == "QLinearConv" for n in convs):
        return True
    return (
        sum(
            all(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input[:2])
            for n in convs
        )
        >= len(convs) // 2
    )


def test_int8_quantizes_convolutions_within_dice_tolerance(demo_checkpoint, demo_onnx, tmp_path):
    fp32 = tmp_path / "model.onnx"
    shutil.copy(demo_onnx, fp32)
    report = quantize_checkpoint_model(demo_checkpoint, fp32, tolerance=0.02)
    assert report.accepted, report.summary()
    assert report.path.is_file() and report.path.stat().st_size < fp32.stat().st_size
    assert report.fp32_dice > 0.3
    images = np.concatenate([b for b, _ in validation_batches(demo_checkpoint)])
    fp32_masks = Predictor(fp32).logits(images).argmax(1)
    int8_masks = Predictor(report.path).logits(images).argmax(1)
    assert (fp32_masks == int8_masks).mean() >= 0.98  # the masks agree, whichever scores better against labels
    model = onnx.load(str(report.path))
    assert _is_quantized_conv(model)
    assert {p.key for p in model.metadata_props} >= {"medseg"}
    refused = quantize_checkpoint_model(demo_checkpoint, fp32, tolerance=-1.0, out=tmp_path / "strict.onnx")
    assert not refused.accepted and not (tmp_path / "strict.onnx").exists()
    assert "refused: Dice drop" in refused.summary()


@pytest.mark.parametrize("model_kind", ["ckpt", "onnx"])
def test_predict_dicom_series_writes_masks_overlays_and_seg(request, demo_checkpoint, demo_root, tmp_path, model_kind):
    model = request.getfixturevalue("demo_onnx") if model_kind == "onnx" else demo_checkpoint
    series = demo_root / "images" / "case03"
    sources = sorted(series.glob("*.dcm"))
    segs = predict(model, series, tmp_path / "out")
    masks = sorted((tmp_path / "out").glob("*_mask.png"))
    assert len(masks) == len(sources) == len(list((tmp_path / "out").glob("*_overlay.png")))
    first = Image.open(masks[0])
    assert first.mode == "P" and first.size == (256, 256)
    assert set(np.unique(np.asarray(first))) <= {0, 1, 2}
    assert len(segs) == 1
    seg = hd.seg.segread(segs[0])
    assert seg.Modality == "SEG" and int(seg.NumberOfFrames) == len(sources) * 2  # slices x foreground classes
    referenced = {
        ref.ReferencedSOPInstanceUID
        for series_ref in seg.ReferencedSeriesSequence
        for ref in series_ref.ReferencedInstanceSequence
    }
    assert referenced == {str(pydicom.dcmread(p).SOPInstanceUID) for p in sources}
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["organ", "lesion"]
    names = " ".join(p.name for p in (tmp_path / "out").iterdir())
    assert "DEMO" not in names and "case03" not in names


def test_sliding_window_policy_matches_image_size(demo_checkpoint, tmp_path):
    predictor = Predictor(demo_checkpoint)
    image = np.random.default_rng(0).random((150, 90, 1), dtype=np.float32)
    for policy in ("resize", "sliding"):
        assert predictor.segment(image, policy).shape == (150, 90)


def test_predict_nifti_volume_is_aligned_with_the_slices(demo_checkpoint, demo_root, tmp_path):
    import nibabel as nib

    series = demo_root / "images" / "case05"
    written = predict(demo_checkpoint, series, tmp_path, nifti=True)
    volume = nib.load(next(p for p in written if p.name.endswith(".nii.gz")))
    data = np.asarray(volume.dataobj)
    sources = sorted(series.glob("*.dcm"), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    assert data.shape == (256, 256, len(sources))
    masks = sorted(tmp_path.glob("*_mask.png"))
    for k, (source, mask) in enumerate(zip(sources, masks, strict=True)):
        ds = pydicom.dcmread(source)
        lps = np.asarray(ds.ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(volume.affine @ [0, 0, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-6)
        np.testing.assert_array_equal(data[:, :, k].T, np.asarray(Image.open(mask)))
    np.testing.assert_allclose(volume.header.get_zooms(), (1.5, 1.5, 5.0))

"""Intensities per modality: CT clipped and z-scored with training foreground statistics kept with the model, MR
z-scored per series, auto by Modality; the same inputs in training, medseg-prepare, medseg-eval and medseg-predict."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from hydra.utils import instantiate

from medseg.data.datamodule import SegmentationDataModule
from medseg.data.decode import load_dicom_frames, load_image_meta, load_raw
from medseg.data.index import index_dicom
from medseg.data.intensity import Z_RANGE, Intensity, normalise_series, scheme_for, series_statistics
from medseg.data.prepare import prepare
from medseg.data.sources import decode_sample
from medseg.data.stream import StreamDataModule
from medseg.deploy.export import export_checkpoint
from medseg.deploy.members import checkpoint_info
from medseg.deploy.predict import predict
from medseg.deploy.predictor import Predictor
from medseg.evaluation.evaluate import evaluate
from medseg.training.pipeline import train
from medseg.utils.checkpoint import load_checkpoint

from .test_context import SHORT
from .test_series import CHAOS, needs_chaos


def z_of(image: np.ndarray) -> np.ndarray:
    """The z-scores an input in [0, 1] stands for."""
    return image.astype(np.float64) * 2 * Z_RANGE - Z_RANGE


@pytest.mark.parametrize(
    ("normalize", "modality", "kind", "scheme"),
    [
        ("auto", "CT", "dicom", "ct"),
        ("auto", "MR", "dicom", "zscore"),
        ("auto", "CR", "dicom", "window"),
        ("auto", "DX", "dicom", "window"),
        ("auto", "", "image", "window"),
        ("auto", "T2", "nifti", "zscore"),  # nnU-Net: any channel but CT is z-scored per image
        ("auto", "CT", "nifti", "ct"),
        ("window", "CT", "dicom", "window"),
        ("zscore", "CT", "dicom", "zscore"),
    ],
)
def test_auto_picks_the_scheme_by_modality(normalize, modality, kind, scheme):
    assert scheme_for(normalize, modality, kind) == scheme


def test_a_zscored_series_has_mean_0_and_std_1_inside_its_percentile_clip():
    rng = np.random.default_rng(3)
    slices = [rng.gamma(2.0, 300.0, (32, 32)) for _ in range(5)]  # MR-like: skewed, no unit
    stats = series_statistics(slices)
    values = np.concatenate([s.ravel() for s in slices])
    assert (stats.low, stats.high) == pytest.approx(tuple(np.percentile(values, [0.5, 99.5])))
    z = z_of(np.stack(normalise_series(slices, "zscore", Intensity("zscore"))))
    assert z.mean() == pytest.approx(0.0, abs=1e-5) and z.std() == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def ct_checkpoint(cache_dir, tmp_path_factory):
    """A short demo run (synthetic CT) with data.normalize=ct."""
    from medseg.config import compose_config

    out = tmp_path_factory.mktemp("ct")
    overrides = [*SHORT, "data.normalize=ct", "test=false", "callbacks.progress_bar=null"]
    train(compose_config([*overrides, f"paths.cache_dir={cache_dir}"], out))
    return out / "checkpoints" / "best.ckpt"


def test_ct_statistics_come_from_the_training_foreground_and_stay_with_the_model(ct_checkpoint, demo_root, tmp_path):
    dm = SegmentationDataModule(image_size=64, normalize="ct", cache_dir=str(demo_root.parent))
    dm.setup()
    stats = dm.intensity.ct
    assert stats is not None and stats.low < stats.mean < stats.high
    hu = np.concatenate([load_raw(s, 1)[0][dm._foreground(s, load_raw(s, 1)[0], None)] for s in dm.splits["train"]])
    assert stats.low == pytest.approx(np.percentile(hu, 0.5), rel=0.05, abs=5)  # a sample of the foreground
    assert stats.high == pytest.approx(np.percentile(hu, 99.5), rel=0.05, abs=5)
    info = checkpoint_info(load_checkpoint(ct_checkpoint))
    assert info.normalize == "ct" and info.ct_statistics == pytest.approx(vars(stats))
    onnx_path, errors = export_checkpoint(ct_checkpoint, tmp_path / "model.onnx")
    assert max(errors) < 1e-4
    onnx = Predictor(onnx_path)
    assert onnx.info.normalize == "ct" and onnx.info.ct_statistics == pytest.approx(vars(stats))
    # prediction decodes a series as training did: the same inputs, pixel for pixel
    sample = dm.splits["val"][0]
    frames = load_dicom_frames(sample.image, 1, raw=True)
    [served] = normalise_series([frames[0][0]], "ct", onnx.intensity)
    trained, _ = load_image_meta(sample, 1, None, dm.intensity)
    np.testing.assert_allclose(served, trained, atol=1e-6)
    members = sorted((s for s in dm.splits["val"] if s.series == sample.series), key=lambda s: s.slice_index)
    expected = np.stack(onnx.segment_series([load_image_meta(s, 1, None, dm.intensity)[0] for s in members]))
    written = predict(onnx_path, sample.image.parent, tmp_path / "pred", nifti=True)
    volume = np.asarray(nib.load(next(p for p in written if p.name.endswith(".nii.gz"))).dataobj)
    np.testing.assert_array_equal(volume.transpose(2, 1, 0), expected)  # medseg-predict: x column, y row, z slice
    rows = evaluate(onnx_path, demo_root, tmp_path / "eval", worst=0)
    assert len({r["case"] for r in rows}) == 12


def test_zscore_statistics_are_per_series_and_prediction_reads_them_from_the_series(demo_root):
    dm = SegmentationDataModule(image_size=64, normalize="zscore", cache_dir=str(demo_root.parent))
    dm.setup()
    assert dm.intensity.ct is None and len(dm.intensity.series) == 12  # one per demo series
    series = sorted({s.series for s in dm.splits["train"]})[0]
    members = sorted((s for s in dm.splits["train"] if s.series == series), key=lambda s: s.slice_index)
    trained = np.stack([load_image_meta(s, 1, None, dm.intensity)[0] for s in members])
    assert z_of(trained).mean() == pytest.approx(0.0, abs=1e-4) and z_of(trained).std() == pytest.approx(1, abs=1e-4)
    raw = [load_dicom_frames(s.image, 1, raw=True)[0][0] for s in members]  # as medseg-predict reads a series
    np.testing.assert_allclose(np.stack(normalise_series(raw, "zscore", Intensity("zscore"))), trained, atol=1e-6)


def test_the_window_scheme_decodes_exactly_as_before(demo_root):
    windowed = SegmentationDataModule(image_size=64, normalize="window", cache_dir=str(demo_root.parent))
    windowed.setup()
    sample = windowed.splits["train"][0]
    before = decode_sample(sample, **{**windowed._prepare.keywords, "intensity": None})  # the path without schemes
    np.testing.assert_array_equal(windowed._prepare(sample)[0], before[0])
    assert windowed.state_dict() == {"intensity": {"normalize": "window", "ct": None}}


def test_prepare_and_stream_keep_the_ct_statistics(make_cfg, demo_root, tmp_path):
    meta = prepare(demo_root, tmp_path / "prepared", image_size=64, normalize="ct")
    memory = SegmentationDataModule(image_size=64, normalize="ct", cache_dir=str(demo_root.parent))
    memory.setup()
    assert meta["settings"]["normalize"] == "ct" and meta["intensity"] == memory.intensity.stored()
    stream = StreamDataModule(str(tmp_path / "prepared"))
    assert stream.state_dict() == {"intensity": memory.intensity.stored()}
    with pytest.raises(ValueError, match="prepared with normalize=ct, but the config asks for window"):
        StreamDataModule(str(tmp_path / "prepared"), normalize="window")
    image = stream.dataset("val")[0]["image"]
    expected = memory.dataset("val")[0]["image"]
    torch.testing.assert_close(image, expected, atol=1e-3, rtol=0)  # stored as float16


def test_an_unknown_scheme_is_refused_before_decoding(make_cfg):
    from medseg.config import validate_config

    with pytest.raises(ValueError) as error:
        validate_config(make_cfg(["data.normalize=minmax"]))
    assert str(error.value) == "data.normalize: expected one of window, ct, zscore, auto, got 'minmax'"


@needs_chaos
def test_chaos_mr_under_auto_is_zscored_per_series(make_cfg, tmp_path):
    cfg = make_cfg(
        [f"data.root={CHAOS}", "data.class_names=[background,liver,right_kidney,left_kidney,spleen]"]
        + ["data.mask_mapping=null", "data.normalize=auto", "data.image_size=64", "data.preload=false"]
    )
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup()
    assert len(dm.intensity.series) == 15 and dm.intensity.ct is None  # MR: no CT statistics
    samples = index_dicom(CHAOS)
    assert {s.modality for s in samples} == {"MR"}
    series = samples[0].series
    members = sorted((s for s in samples if s.series == series), key=lambda s: s.slice_index)
    z = z_of(np.stack([load_image_meta(s, 1, None, dm.intensity)[0] for s in members]))
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02  # statistics from a sample of a million voxels
    assert pydicom.dcmread(members[0].image, stop_before_pixels=True).Modality == "MR"

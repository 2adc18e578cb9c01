"""DICOM decoding on files written with pydicom: modality LUT, VOI window, photometric handling."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medseg.data.dicom import WINDOW_PRESETS, apply_window, read_slice


def new_dataset(sop_class: str, patient_id: str, modality: str) -> pydicom.Dataset:
    """An empty instance of SOP_CLASS with file meta (explicit VR little endian) and patient/modality set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = patient_id, modality
    return ds


def write_ct(
    path, stored: np.ndarray, slope=1.0, intercept=-1024.0, center=40, width=400, photometric="MONOCHROME2", signed=True
):
    """Write a minimal CT slice with the given stored values and tags."""
    ds = new_dataset(CTImageStorage, "TEST-1", "CT")
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_window_matches_hand_computed_values(tmp_path):
    # Stored -> HU with intercept -1024: 0 -> -1024, 1024 -> 0, 1064 -> 40, 1300 -> 276 (above the window).
    stored = np.array([[0, 1024, 1064, 1300], [1054, 1074, 864, 1243]], dtype=np.int16)
    image, meta = read_slice(write_ct(tmp_path / "a.dcm", stored))
    # DICOM linear VOI, c=40, w=400: y = (x - 39.5) / 399 + 0.5, clipped to [0, 1].
    hu = stored.astype(np.float64) - 1024
    expected = np.clip((hu - 39.5) / 399 + 0.5, 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image[0, 0] == 0.0 and image[0, 3] == 1.0
    assert abs(image[0, 2] - (0.5 + 0.5 / 399)) < 1e-6
    assert meta.window == (40.0, 400.0) and meta.patient_id == "TEST-1"


def test_slope_and_signed_values(tmp_path):
    stored = np.array([[-500, 0, 250, 500]], dtype=np.int16)
    image, _ = read_slice(write_ct(tmp_path / "s.dcm", stored, slope=2.0, intercept=0.0, center=0, width=2001))
    hu = stored * 2.0
    np.testing.assert_allclose(image, np.clip((hu + 0.5) / 2000 + 0.5, 0, 1), atol=1e-6)


def test_monochrome1_is_inverted_after_windowing(tmp_path):
    stored = np.array([[900, 1024, 1100, 1300]], dtype=np.int16)
    mono2, _ = read_slice(write_ct(tmp_path / "m2.dcm", stored))
    mono1, _ = read_slice(write_ct(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_preset_and_explicit_window_override_tags(tmp_path):
    stored = np.arange(16, dtype=np.int16).reshape(4, 4) * 100
    path = write_ct(tmp_path / "p.dcm", stored)
    c, w = WINDOW_PRESETS["lung"]
    lung, meta = read_slice(path, "lung")
    np.testing.assert_allclose(lung, apply_window(stored - 1024.0, c, w), atol=1e-6)
    assert meta.window == (c, w)
    explicit, _ = read_slice(path, [0, 100])
    np.testing.assert_allclose(explicit, apply_window(stored - 1024.0, 0, 100), atol=1e-6)
    with pytest.raises(ValueError, match="unknown window preset"):
        read_slice(path, "liverish")


def test_no_window_tags_fall_back_to_percentiles(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4000, (64, 64)).astype(np.int16)
    image, meta = read_slice(write_ct(tmp_path / "n.dcm", stored, center=None))
    lo, hi = np.percentile(stored - 1024.0, [0.5, 99.5])
    assert meta.window == pytest.approx(((lo + hi) / 2, hi - lo))
    assert 0.004 < (image == 0).mean() < 0.02 and 0.004 < (image == 1).mean() < 0.02


def test_broken_file_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not a dicom file at all")
    with pytest.raises(ValueError, match="broken.dcm"):
        read_slice(bad)

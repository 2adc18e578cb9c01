"""medseg-node without servers: the DICOM it writes passes dciodvfy and decodes through dcmqi, SEG UIDs from
source series and model, rules with every reason, the job table, failures retried and the spool expired."""

from __future__ import annotations

import shutil
import subprocess
import time

import numpy as np
import pydicom
import pytest

from medseg.deploy.seg import ModelIdentity, write_seg
from medseg.node.jobs import JobTable
from medseg.node.rules import check_rules, select

from .node_helpers import (
    RULES,
    dciodvfy_errors,
    free_port,
    job_states,
    needs_dciodvfy,
    node_config,
    series_files,
    to_orthanc,
)


@needs_dciodvfy
def test_the_demo_slices_and_a_seg_pass_dciodvfy(demo_root, tmp_path):
    files = series_files(demo_root)
    assert dciodvfy_errors(files[0]) == []
    masks = [np.zeros((256, 256), np.uint8) for _ in files]
    masks[3][100:140, 90:150] = 1
    seg = write_seg(files, masks, ["background", "organ", "lesion"], tmp_path, ModelIdentity("m", "1", "ab" * 32))
    assert dciodvfy_errors(seg) == []


@pytest.mark.skipif(shutil.which("segimage2itkimage") is None, reason="dcmqi missing")
def test_dcmqi_decodes_the_seg_to_the_label_volume_medseg_writes(demo_root, tmp_path):
    import nibabel as nib

    from medseg.deploy.seg import write_nifti

    files = series_files(demo_root)
    masks = [np.zeros((256, 256), np.uint8) for _ in files]
    masks[3][100:140, 90:150], masks[4][30:60, 10:50], masks[5][200:210, 220:250] = 1, 2, 1
    seg = write_seg(files, masks, ["background", "organ", "lesion"], tmp_path, ModelIdentity("m", "1", "ab" * 32))
    ours = nib.as_closest_canonical(nib.load(write_nifti(files, masks, tmp_path)))
    (tmp_path / "dcmqi").mkdir()
    command = ["segimage2itkimage", "--inputDICOM", str(seg), "--outputDirectory", str(tmp_path / "dcmqi")]
    subprocess.run([*command, "--outputType", "nifti"], check=True, capture_output=True, timeout=120)
    decoded = np.zeros(ours.shape, np.uint8)
    for path in sorted((tmp_path / "dcmqi").glob("*.nii.gz")):  # one volume per segment, valued its number
        image = nib.as_closest_canonical(nib.load(path))
        assert np.allclose(image.affine, ours.affine, atol=1e-3)
        decoded = np.maximum(decoded, np.asarray(image.dataobj).astype(np.uint8))
    np.testing.assert_array_equal(decoded, np.asarray(ours.dataobj))


def test_seg_uids_come_from_the_source_series_and_the_model():
    model = ModelIdentity("m", "1", "ab" * 32)
    assert model.seg_uids("1.2.3") == model.seg_uids("1.2.3") != model.seg_uids("1.2.4")
    assert ModelIdentity("m", "1", "cd" * 32).seg_uids("1.2.3") != model.seg_uids("1.2.3")


def test_rules_select_by_header_and_give_every_reason(demo_root):
    first = pydicom.dcmread(series_files(demo_root)[0], stop_before_pixels=True)
    rules = check_rules([{"name": "mr", "modality": "MR"}, *RULES], "rules.yaml")
    assert select(rules, first, 8) == ("abdomen-ct", "")
    name, reason = select(rules, first, 1)
    assert name is None and reason == "mr: Modality 'CT' is not 'MR'; abdomen-ct: 1 slices, outside [2, 500]"
    with pytest.raises(ValueError, match="rules.yaml: rule 0: unknown keys \\['modallity'\\]"):
        check_rules([{"modallity": "CT"}], "rules.yaml")


def test_the_job_table_resumes_pending_series_and_retries_failed_ones(tmp_path):
    jobs = JobTable(tmp_path / "jobs.sqlite")
    jobs.instance_received("s1", "m")
    jobs.instance_received("s1", "m")
    jobs.instance_received("s2", "m")
    assert [r["instances"] for r in jobs.all()] == [2, 1]
    jobs.set_state("s2", "m", "failed", "ValueError: bad\nsecond line")
    assert [r["series"] for r in jobs.ready("m", 0)] == ["s1"]
    assert jobs.get("s2", "m")["reason"] == "ValueError: bad" and jobs.retry("s2") == 1
    assert {r["series"] for r in JobTable(tmp_path / "jobs.sqlite").ready("m", 0)} == {"s1", "s2"}


def test_a_series_that_cannot_be_sent_fails_with_its_reason_is_retried_and_its_spool_expires(
    node_model, demo_root, tmp_path
):
    from medseg.node.cli import retry, status
    from medseg.node.service import Node
    from medseg.node.settings import read_settings

    config, _ = node_config(tmp_path, node_model, to_orthanc(free_port()))  # nothing listens there
    node = Node(read_settings(config))
    for path in series_files(demo_root, 5):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series = node.store(path.read_bytes(), ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert node.process(series) == "failed"
    assert f"{series}" in status(str(config)) and "ConnectionError: destination ORTHANC@127.0.0.1" in status(
        str(config)
    )
    assert retry(str(config), series) == 1 and job_states(config) == {series: "received"}
    assert (node.series_folder(series) / "seg.dcm").is_file()  # written atomically before the send failed
    node.jobs.set_state(series, node.model.sha256, "skipped", "test")
    assert node.clean() == 0  # finished just now: kept
    node.settings.retention_hours = 0
    time.sleep(0.01)
    assert node.clean() == 1 and not node.series_folder(series).exists()


def test_an_instance_arriving_after_processing_began_reopens_the_series_as_its_next_version(tmp_path):
    jobs = JobTable(tmp_path / "jobs.sqlite")
    jobs.instance_received("s1", "m")
    jobs.instance_received("s1", "m")
    assert jobs.get("s1", "m")["version"] == 0  # still arriving: one version
    assert jobs.set_state("s1", "m", "selected", "rule abdomen", version=0)
    jobs.instance_received("s1", "m")  # three more arrive while the first two are segmented
    jobs.instance_received("s1", "m")
    row = jobs.get("s1", "m")
    assert (row["state"], row["version"], row["instances"]) == ("received", 1, 4)
    assert not jobs.set_state("s1", "m", "sent", version=0)  # the older version records nothing more
    assert [r["series"] for r in jobs.ready("m", 0)] == ["s1"]
    assert jobs.set_state("s1", "m", "sent", version=1)
    jobs.instance_received("s1", "m")  # one more after the SEG went out: reopened again
    assert (jobs.get("s1", "m")["state"], jobs.get("s1", "m")["version"]) == ("received", 2)


def test_files_still_being_written_into_the_spool_are_never_read(node_model, demo_root, tmp_path):
    from medseg.node.service import Node
    from medseg.node.settings import read_settings

    config, _ = node_config(tmp_path, node_model, to_orthanc(free_port()))  # nothing listens there
    node = Node(read_settings(config))
    files = series_files(demo_root, 5)
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series = node.store(path.read_bytes(), ds.SeriesInstanceUID, ds.SOPInstanceUID)
    node.store(files[0].read_bytes(), ds.SeriesInstanceUID, pydicom.dcmread(files[0]).SOPInstanceUID)  # again
    assert node.jobs.get(series, node.model.sha256)["instances"] == len(files)  # the same instance counts once
    instances = node.series_folder(series) / "instances"
    shutil.copy(files[0], instances / ".partial.dcm.x1y2z3.dcm")  # as atomic_path names a file before its rename
    assert node.process(series) == "failed"  # the send: nothing listens
    seg = pydicom.dcmread(node.series_folder(series) / "seg.dcm")
    referenced = [r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert sorted(referenced) == sorted(pydicom.dcmread(f).SOPInstanceUID for f in files)

"""medseg-node against a real Orthanc on loopback: C-STORE in (a demo CT and a real chaos_mr MR series), SEG back
by C-STORE or STOW-RS, DICOMweb polling, rules, the AE allow-list, SIGKILL and restarts that send each SEG once,
and DIMSE over TLS."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from .helpers import REPO, kill_when
from .node_helpers import (
    DCIODVFY,
    RULES,
    STORESCU,
    certificates,
    dciodvfy_errors,
    job_states,
    needs_servers,
    node_config,
    run_node_until,
    run_orthanc,
    segs_of,
    series_files,
    start_node,
    storescu,
    to_orthanc,
    wait_for,
)
from .test_series import CHAOS, needs_chaos

CHAOS_TRAINING = ["CHAOS_MR_02", "CHAOS_MR_03", "CHAOS_MR_05"]
CHAOS_ORGANS = ["liver", "right_kidney", "left_kidney", "spleen"]


@pytest.fixture
def orthanc(tmp_path):
    """A real Orthanc on loopback; yields (DICOMweb url, DICOM port, client)."""
    process, url, dicom, client = run_orthanc(tmp_path)
    yield url, dicom, client
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def chaos_node_model(cache_dir, tmp_path_factory) -> Path:
    """An ONNX model of experiment=chaos_mr (2.5-D, MR z-scored per series) after a short run on three patients."""
    from medseg.config import compose_config
    from medseg.deploy.export import export_checkpoint
    from medseg.training.pipeline import train

    out = tmp_path_factory.mktemp("chaos-node-model")
    root = out / "data"
    for patient in CHAOS_TRAINING:
        shutil.copytree(CHAOS / "images" / patient, root / "images" / patient)
        (root / "masks").mkdir(exist_ok=True)
        shutil.copy(CHAOS / "masks" / f"{patient}.nii.gz", root / "masks")
    overrides = ["experiment=chaos_mr", f"data.root={root}", "data.num_folds=null", "data.split=[0.67,0.33,0.0]"]
    overrides += ["stage.stages.0.epochs=1", "trainer.limit_train_batches=2", "model.log_images=false"]
    overrides += ["callbacks.progress_bar=null", f"paths.cache_dir={cache_dir}"]
    train(compose_config(overrides, out))
    path, _ = export_checkpoint(out / "checkpoints" / "best.ckpt", out / "abdomen-mr.onnx")
    return path


SOURCES = {  # a synthetic CT series of the demo, or a real MR series of chaos_mr (a patient left out of training)
    "demo": ("node_model", RULES, ["organ", "lesion"]),
    "chaos_mr": ("chaos_node_model", [{"name": "abdomen-mr", "modality": "MR", "slices": [2, 500]}], CHAOS_ORGANS),
}


@needs_servers
@pytest.mark.slow
@pytest.mark.parametrize("source_name", [pytest.param("demo"), pytest.param("chaos_mr", marks=needs_chaos)])
def test_a_series_sent_by_storescu_comes_back_to_orthanc_as_one_seg(request, orthanc, demo_root, tmp_path, source_name):
    from medseg.deploy.predict import predict

    fixture, rules, segment_labels = SOURCES[source_name]
    node_model = request.getfixturevalue(fixture)
    files = series_files(demo_root) if source_name == "demo" else sorted((CHAOS / "images" / "CHAOS_MR_01").iterdir())
    web, dicom_port, client = orthanc
    config, port = node_config(tmp_path, node_model, to_orthanc(dicom_port), rules=rules)
    node = start_node(config, port)
    try:
        result = storescu(files, port)
        assert result.returncode == 0, result.stderr
        source = pydicom.dcmread(files[0], stop_before_pixels=True)
        [seg] = wait_for(lambda: segs_of(client, source.SeriesInstanceUID))
    finally:
        node.terminate()
        node.wait(timeout=30)
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    [expected_path] = predict(node_model, files[0].parent, tmp_path / "predicted")  # medseg-predict, same series
    expected = pydicom.dcmread(expected_path)
    np.testing.assert_array_equal(seg.pixel_array, expected.pixel_array)
    assert [item.SegmentLabel for item in seg.SegmentSequence] == segment_labels
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "abdomen-demo" and algorithm.AlgorithmVersion == "0.1"
    [ours] = [item for item in seg.ContributingEquipmentSequence if item.Manufacturer == "medseg"]
    assert ours.ManufacturerModelName == "abdomen-demo" and ours.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    sha = hashlib.sha256(node_model.read_bytes()).hexdigest()
    assert f"sha256:{sha[:57]}" in ours.SoftwareVersions and algorithm.AlgorithmParameters == f"sha256={sha}"
    assert list(job_states(config).values()) == ["sent"]
    spool = Path(yaml.safe_load(config.read_text())["spool"])
    status = subprocess.run(
        [sys.executable, "-m", "medseg.node.cli", "status", str(config)], capture_output=True, text=True, cwd=REPO
    )
    assert " sent " in status.stdout
    written = (spool / "node.log").read_text() + status.stdout + (spool / "jobs.sqlite").read_bytes().decode("latin-1")
    assert str(source.PatientID) not in written and str(source.PatientName) not in written
    assert str(source.SeriesInstanceUID) not in written  # series by keyed pseudonym only
    if DCIODVFY:
        seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
        assert dciodvfy_errors(tmp_path / "seg.dcm") == []


@needs_servers
@pytest.mark.slow
def test_unmatched_series_are_skipped_and_unknown_callers_refused(orthanc, node_model, demo_root, tmp_path):
    _, dicom_port, client = orthanc
    config, port = node_config(
        tmp_path, node_model, {"dimse": {"host": "127.0.0.1", "port": dicom_port, "ae_title": "ORTHANC"}}
    )
    node = start_node(config, port)
    try:
        assert storescu(series_files(demo_root, 1), port, aet="INTRUDER").returncode != 0  # association rejected
        other = tmp_path / "head"
        other.mkdir()
        for path in series_files(demo_root, 2):
            ds = pydicom.dcmread(path)
            ds.SeriesDescription = "head CT"
            ds.save_as(other / path.name)
        assert storescu(sorted(other.iterdir()), port).returncode == 0
        wait_for(lambda: "skipped" in job_states(config).values())
    finally:
        node.terminate()
        node.wait(timeout=30)
    status = subprocess.run(
        [sys.executable, "-m", "medseg.node.cli", "status", str(config)], capture_output=True, text=True, cwd=REPO
    ).stdout
    assert "skipped" in status and "abdomen-ct: SeriesDescription does not match 'abdomen'" in status
    assert len(job_states(config)) == 1  # nothing was received from the refused caller
    assert client.search_for_series(search_filters={"Modality": "SEG"}) == []


@needs_servers
@pytest.mark.slow
def test_a_killed_node_processes_pending_series_once_and_never_sends_a_seg_twice(
    orthanc, node_model, demo_root, tmp_path
):
    _, dicom_port, client = orthanc
    config, port = node_config(tmp_path, node_model, to_orthanc(dicom_port), quiet_s=30)  # none before the kill
    node = start_node(config, port)
    files = series_files(demo_root, 3)
    assert storescu(files, port).returncode == 0
    node.kill()  # SIGKILL: instances acknowledged are on disk, the series is pending
    node.wait(timeout=30)
    assert list(job_states(config).values()) == ["received"]
    config.write_text(config.read_text().replace("quiet_s: 30", "quiet_s: 1"))
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    node = start_node(config, port)
    # SIGKILL again as soon as the node has started on the series: selected, segmented, or even sent
    assert kill_when(node, lambda: set(job_states(config).values()) != {"received"}, timeout=90, poll=0.01)
    run_node_until(config, port, lambda: list(job_states(config).values()) == ["sent"])
    # killed after sending but before recording it: the restarted node sends the same SEG instance again
    spool = Path(yaml.safe_load(config.read_text())["spool"])
    with sqlite3.connect(spool / "jobs.sqlite") as db:
        db.execute("UPDATE jobs SET state = 'segmented'")
    run_node_until(config, port, lambda: list(job_states(config).values()) == ["sent"])
    assert len(segs_of(client, uid)) == 1


@needs_servers
@pytest.mark.slow
def test_the_node_polls_dicomweb_and_stows_the_seg(orthanc, node_model, demo_root, tmp_path):
    web, _, client = orthanc
    files = series_files(demo_root, 4)
    client.store_instances([pydicom.dcmread(f) for f in files])  # the series reaches the PACS first
    config, _ = node_config(
        tmp_path, node_model, {"dicomweb": {"url": web}}, source={"dicomweb": {"url": web, "poll_s": 1}}
    )
    node = start_node(config, None)
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    try:
        [seg] = wait_for(lambda: segs_of(client, uid))
    finally:
        node.terminate()
        node.wait(timeout=30)
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(files)
    assert list(job_states(config).values()) == ["sent"]


@needs_servers
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing")
def test_dimse_over_tls_both_ways(node_model, demo_root, tmp_path):
    tls = certificates(tmp_path / "tls")
    extra = {"DicomTlsEnabled": True, "DicomTlsCertificate": tls["cert"], "DicomTlsPrivateKey": tls["key"]}
    extra |= {"DicomTlsTrustedCertificates": tls["ca"], "DicomTlsRemoteCertificateRequired": True}
    orthanc, _, dicom_port, client = run_orthanc(tmp_path, **extra)
    config, port = node_config(tmp_path, node_model, to_orthanc(dicom_port), tls=tls)
    node = start_node(config, port)
    files = series_files(demo_root, 6)
    try:
        assert storescu(files[:1], port).returncode != 0  # plain TCP is refused
        secure = [STORESCU, "+tls", tls["key"], tls["cert"], "+cf", tls["ca"], "-aet", "STORESCU", "-aec", "MEDSEG"]
        result = subprocess.run([*secure, "127.0.0.1", str(port), *map(str, files)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
        [seg] = wait_for(lambda: segs_of(client, uid))  # sent to Orthanc over TLS
    finally:
        node.terminate()
        node.wait(timeout=30)
        orthanc.terminate()
        orthanc.wait(timeout=30)
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(files)


@needs_servers
@pytest.mark.slow
def test_a_series_sent_in_two_bursts_ends_with_a_seg_covering_every_instance(orthanc, node_model, demo_root, tmp_path):
    _, dicom_port, client = orthanc
    config, port = node_config(tmp_path, node_model, to_orthanc(dicom_port), quiet_s=1)
    files = series_files(demo_root, 7)
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    node = start_node(config, port)
    try:
        assert storescu(files[:3], port).returncode == 0
        wait_for(lambda: list(job_states(config).values()) in (["sent"], ["skipped"]))  # a pause over quiet_s
        first = segs_of(client, uid)
        assert storescu(files[3:], port).returncode == 0
        wait_for(lambda: len(segs_of(client, uid)) == len(first) + 1)
    finally:
        node.terminate()
        node.wait(timeout=30)
    every = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    segs = segs_of(client, uid)
    covered = [
        {r.ReferencedSOPInstanceUID for r in s.ReferencedSeriesSequence[0].ReferencedInstanceSequence} for s in segs
    ]
    assert covered.count(every) == 1 and len(segs) == 1 + len(first)  # the whole series, plus the superseded one
    assert len({s.SeriesInstanceUID for s in segs}) == len(segs)
    assert list(job_states(config).values()) == ["sent"]

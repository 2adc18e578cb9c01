"""medseg-node against a real Orthanc on loopback: C-STORE in, SEG back by C-STORE or STOW-RS, DICOMweb polling,
rules, the AE allow-list, restarts that send each SEG once, and DICOM that dciodvfy accepts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from medseg.deploy.seg import ModelIdentity, write_seg
from medseg.node.jobs import JobTable
from medseg.node.rules import check_rules, select

from .helpers import REPO

SYSTEM_PATH = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != Path(sys.executable).parent)
# dcmtk's storescu (pynetdicom installs a storescu of its own beside the venv's python)
ORTHANC, STORESCU, DCIODVFY = (shutil.which(p, path=SYSTEM_PATH) for p in ("Orthanc", "storescu", "dciodvfy"))
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
needs_servers = pytest.mark.skipif(
    not (ORTHANC and STORESCU and DICOMWEB_PLUGIN.is_file()), reason="orthanc, orthanc-dicomweb or dcmtk missing"
)
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) missing")
RULES = [{"name": "abdomen-ct", "modality": "CT", "series_description": "abdomen", "slices": [2, 500]}]


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy prints for a DICOM file."""
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def series_files(demo_root: Path, case: int = 0) -> list[Path]:
    """The files of one demo series."""
    return sorted((demo_root / "images" / f"case{case:02d}").glob("*.dcm"))


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


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 90.0, every: float = 0.3):
    """PREDICATE's first truthy value within TIMEOUT seconds; fails the test otherwise."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")


def run_orthanc(folder: Path, **extra):
    """Start a real Orthanc with DICOMweb on loopback ports chosen now (EXTRA: more settings); returns
    (process, DICOMweb url, DICOM port, a DICOMweb client) once it answers."""
    from dicomweb_client.api import DICOMwebClient

    http, dicom = free_port(), free_port()
    config = {
        "Name": "medseg-test",
        "StorageDirectory": str(folder / "orthanc"),
        "IndexDirectory": str(folder / "orthanc"),
        "HttpPort": http,
        "DicomPort": dicom,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,  # HTTP from loopback only
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": False,  # C-STORE only from the modalities below, on loopback
        "DicomCheckModalityHost": True,
        "DicomModalities": {"node": ["MEDSEG", "127.0.0.1", 1], "storescu": ["STORESCU", "127.0.0.1", 1]},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        **extra,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config))
    process = subprocess.Popen([ORTHANC, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http}/dicom-web"
    client = DICOMwebClient(url)
    wait_for(lambda: _answers(client), timeout=30)
    return process, url, dicom, client


@pytest.fixture
def orthanc(tmp_path):
    """A real Orthanc on loopback; yields (DICOMweb url, DICOM port, client)."""
    process, url, dicom, client = run_orthanc(tmp_path)
    yield url, dicom, client
    process.terminate()
    process.wait(timeout=30)


def _answers(client) -> bool:
    try:
        client.search_for_studies()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def node_model(cache_dir, tmp_path_factory) -> Path:
    """An ONNX model exported from a short demo run."""
    from medseg.config import compose_config
    from medseg.deploy.export import export_checkpoint
    from medseg.training.pipeline import train

    out = tmp_path_factory.mktemp("node-model")
    overrides = ["data.image_size=64", "stage.stages.0.epochs=1", "trainer.limit_train_batches=2", "test=false"]
    overrides += ["model.log_images=false", "callbacks.progress_bar=null", f"paths.cache_dir={cache_dir}"]
    train(compose_config(overrides, out))
    path, _ = export_checkpoint(out / "checkpoints" / "best.ckpt", out / "abdomen.onnx")
    return path


def node_config(tmp_path: Path, model: Path, destination: dict, **extra) -> tuple[Path, int]:
    """A node configuration file in TMP_PATH and the node's port."""
    port = free_port()
    settings = {
        "ae_title": "MEDSEG",
        "port": port,
        "allowed_aes": ["STORESCU", "ORTHANC"],
        "spool": str(tmp_path / "spool"),
        "model": str(model),
        "model_name": "abdomen-demo",
        "model_version": "0.1",
        "rules": RULES,
        "quiet_s": 1,
        "destination": destination,
        **extra,
    }
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path, port


def to_orthanc(port: int) -> dict:
    """The destination section: Orthanc's DICOM port."""
    return {"dimse": {"host": "127.0.0.1", "port": port, "ae_title": "ORTHANC"}}


def start_node(config: Path, port: int | None) -> subprocess.Popen:
    """medseg-node serve CONFIG in the runtime install (no torch) where CI provides one."""
    python = os.environ.get("MEDSEG_RUNTIME_PYTHON", sys.executable)
    log = open(config.parent / "node.out", "a")  # noqa: SIM115 - kept open for the process's lifetime
    command = [python, "-m", "medseg.node.cli", "serve", str(config)]
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    if port is not None:
        wait_for(lambda: _listening(port), timeout=60)
    return process


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def storescu(files: list[Path], port: int, aet: str = "STORESCU") -> subprocess.CompletedProcess:
    """dcmtk's storescu sending FILES to the node as AET."""
    command = [STORESCU, "-aet", aet, "-aec", "MEDSEG", "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def segs_of(client, source_series: str) -> list[pydicom.Dataset]:
    """The SEG instances in the server that reference SOURCE_SERIES."""
    found = []
    for series in client.search_for_series(search_filters={"Modality": "SEG"}):
        study, uid = series["0020000D"]["Value"][0], series["0020000E"]["Value"][0]
        for seg in client.retrieve_series(study, uid):
            if seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series:
                found.append(seg)
    return found


def job_states(config: Path) -> dict[str, str]:
    """series pseudonym -> state, read from the job table."""
    with sqlite3.connect(Path(yaml.safe_load(config.read_text())["spool"]) / "jobs.sqlite") as db:
        return dict(db.execute("SELECT series, state FROM jobs"))


@needs_servers
@pytest.mark.slow
def test_a_series_sent_by_storescu_comes_back_to_orthanc_as_one_seg(orthanc, node_model, demo_root, tmp_path):
    from medseg.deploy.predict import predict

    web, dicom_port, client = orthanc
    config, port = node_config(
        tmp_path, node_model, {"dimse": {"host": "127.0.0.1", "port": dicom_port, "ae_title": "ORTHANC"}}
    )
    node = start_node(config, port)
    try:
        files = series_files(demo_root)
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
    node = start_node(config, port)
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    try:
        wait_for(lambda: segs_of(client, uid))
        wait_for(lambda: list(job_states(config).values()) == ["sent"])
    finally:
        node.kill()
        node.wait(timeout=30)
    # killed after sending but before recording it: the restarted node sends the same SEG instance again
    spool = Path(yaml.safe_load(config.read_text())["spool"])
    with sqlite3.connect(spool / "jobs.sqlite") as db:
        db.execute("UPDATE jobs SET state = 'segmented'")
    node = start_node(config, port)
    try:
        wait_for(lambda: list(job_states(config).values()) == ["sent"])
    finally:
        node.terminate()
        node.wait(timeout=30)
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


def certificates(folder: Path) -> dict[str, str]:
    """A test CA and one certificate it signed for 127.0.0.1 (server and client use), made with openssl now."""
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    new_key = ["req", "-newkey", "rsa:2048", "-nodes"]
    openssl(*new_key, "-x509", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca")
    openssl(*new_key, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=localhost")
    (folder / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    signed = ["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "node.crt", "-days", "2"]
    openssl("x509", "-req", "-in", "node.csr", *signed, "-extfile", "ext")
    return {"cert": str(folder / "node.crt"), "key": str(folder / "node.key"), "ca": str(folder / "ca.crt")}


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

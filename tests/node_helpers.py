"""Real servers for the node tests: Orthanc on loopback ports chosen at test time, medseg-node in a subprocess,
dcmtk's storescu and dicom3tools' dciodvfy."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import yaml

from .helpers import REPO


def dcmtk_storescu() -> str | None:
    """dcmtk's storescu: pynetdicom installs a Python script of the same name into every environment's bin."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(folder) / "storescu"
        if path.is_file() and os.access(path, os.X_OK) and path.read_bytes()[:2] != b"#!":
            return str(path)
    return None


ORTHANC, DCIODVFY = shutil.which("Orthanc") or "", shutil.which("dciodvfy") or ""  # "": not installed
STORESCU = dcmtk_storescu() or ""
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
needs_servers = pytest.mark.skipif(
    not (ORTHANC and STORESCU and DICOMWEB_PLUGIN.is_file()), reason="orthanc, orthanc-dicomweb or dcmtk missing"
)
needs_dciodvfy = pytest.mark.skipif(not DCIODVFY, reason="dciodvfy (dicom3tools) missing")
RULES = [{"name": "abdomen-ct", "modality": "CT", "series_description": "abdomen", "slices": [2, 500]}]


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy prints for a DICOM file."""
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def series_files(demo_root: Path, case: int = 0) -> list[Path]:
    """The files of one demo series."""
    return sorted((demo_root / "images" / f"case{case:02d}").glob("*.dcm"))


def free_ports(count: int = 1) -> list[int]:
    """COUNT distinct TCP ports free on loopback now (held together while chosen, so never the same twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A TCP port free on loopback now."""
    return free_ports()[0]


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

    http, dicom = free_ports(2)
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


def _answers(client) -> bool:
    try:
        client.search_for_studies()
        return True
    except Exception:
        return False


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


def run_node_until(config: Path, port: int, done) -> None:
    """Start the node on CONFIG, wait until DONE() holds, then stop it."""
    node = start_node(config, port)
    try:
        wait_for(done)
    finally:
        node.terminate()
        node.wait(timeout=30)


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

"""The node's configuration file (YAML or JSON): where it listens, which model and rules, where SEGs go.

    ae_title: MEDSEG            # the node's AE title
    host: 127.0.0.1             # listen address (C-STORE SCP); port: 11112
    allowed_aes: [PACS, CT01]   # calling AE titles accepted; any other association is refused
    spool: /var/lib/medseg-node # received instances, SEGs, the job table (jobs.sqlite) and node.log
    model: /opt/models/abdomen.onnx
    model_name: abdomen-mr      # model_version: "1.0"; recorded in the SEG with the model's SHA-256
    rules: rules.yaml           # or a list of rules (medseg.node.rules)
    quiet_s: 10                 # a series is complete this long after its last instance
    retention_hours: 24         # spool folders of finished series are deleted after this
    destination: {dimse: {host: 127.0.0.1, port: 4242, ae_title: ORTHANC}}
    #            or {dicomweb: {url: http://pacs/dicom-web, token_env: PACS_TOKEN}}
    source: {dicomweb: {url: http://pacs/dicom-web, poll_s: 10, token_env: PACS_TOKEN}}  # optional polling
    tls: {cert: node.crt, key: node.key, ca: ca.crt}  # optional: DIMSE over TLS, both directions

Credentials are never in the file: `token_env` (a bearer token) or `user_env` and `password_env`
(basic auth) name environment variables.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medseg.node.rules import check_rules

KEYS = {"ae_title", "host", "port", "allowed_aes", "spool", "model", "model_name", "model_version", "rules"}
KEYS |= {"quiet_s", "retention_hours", "destination", "source", "tls", "threads", "policy"}


@dataclass
class NodeSettings:
    """A checked node configuration."""

    ae_title: str
    allowed_aes: list[str]
    spool: Path
    model: Path
    rules: list[dict]
    destination: dict
    host: str = "127.0.0.1"
    port: int = 11112
    model_name: str = ""
    model_version: str = "1"
    quiet_s: float = 10.0
    retention_hours: float = 24.0
    source: dict = field(default_factory=dict)
    tls: dict = field(default_factory=dict)
    threads: int | None = None
    policy: str = "resize"
    where: str = ""


def read_settings(path: str | Path) -> NodeSettings:
    """The settings in PATH, checked: a missing or unknown key ends in one line naming the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) if path.suffix != ".json" else json.loads(path.read_text())
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable node configuration ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a node configuration is a mapping of settings")
    unknown = set(raw) - KEYS
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
    for key in ("ae_title", "allowed_aes", "spool", "model", "rules", "destination"):
        if key not in raw:
            raise ValueError(f"{path}: {key} is required")
    rules = raw["rules"]
    if isinstance(rules, str):
        rules_path = (path.parent / rules).resolve()
        rules = yaml.safe_load(rules_path.read_text()) if rules_path.is_file() else None
        if not isinstance(rules, list):
            raise ValueError(f"{rules_path}: not a list of rules")
    base = {k: raw[k] for k in raw if k != "rules"}
    for key in ("spool", "model"):
        base[key] = (path.parent / str(raw[key])).resolve()
    settings = NodeSettings(**base, rules=check_rules(rules, str(path)), where=str(path))
    check_destination(settings)
    return settings


def check_destination(settings: NodeSettings) -> None:
    """One destination (dimse or dicomweb) with what it needs; credentials only by environment variable."""
    kinds = set(settings.destination)
    if len(kinds) != 1 or not kinds <= {"dimse", "dicomweb"}:
        raise ValueError(f"{settings.where}: destination must be one of dimse or dicomweb")
    for section in (settings.destination, settings.source):
        for values in section.values():
            secrets = {"token", "password", "user"} & set(values)
            if secrets:
                raise ValueError(f"{settings.where}: {sorted(secrets)[0]} must come from an environment variable")


def web_auth(section: dict[str, Any]) -> tuple[dict[str, str], tuple[str, str] | None]:
    """(headers, basic auth) for a DICOMweb section: a bearer token from token_env, or user_env/password_env."""
    if section.get("token_env"):
        token = os.environ.get(section["token_env"])
        if not token:
            raise ValueError(f"environment variable {section['token_env']} (the DICOMweb token) is not set")
        return {"Authorization": f"Bearer {token}"}, None
    if section.get("user_env"):
        user, password = os.environ.get(section["user_env"]), os.environ.get(section.get("password_env", ""))
        if not user or password is None:
            raise ValueError(f"environment variables {section['user_env']} and its password_env must be set")
        return {}, (user, password)
    return {}, None


def tls_context(tls: dict, server: bool) -> ssl.SSLContext | None:
    """An SSL context for DIMSE from the tls section (cert, key, ca); None without one."""
    if not tls:
        return None
    purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
    context = ssl.create_default_context(purpose, cafile=tls.get("ca"))
    context.load_cert_chain(tls["cert"], tls["key"])
    if server and tls.get("ca"):
        context.verify_mode = ssl.CERT_REQUIRED  # the calling AE shows a certificate signed by the CA
    return context

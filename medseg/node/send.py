"""Sending a SEG to the destination: C-STORE (pynetdicom, TLS where configured) or STOW-RS (dicomweb-client)."""

from __future__ import annotations

import pydicom

from medseg.node.settings import NodeSettings, tls_context, web_auth


def send_seg(settings: NodeSettings, seg: pydicom.Dataset) -> None:
    """Store SEG at the configured destination; raise with the destination's status on failure."""
    if "dimse" in settings.destination:
        store_dimse(settings, seg)
    else:
        store_web(settings.destination["dicomweb"], seg)


def store_dimse(settings: NodeSettings, seg: pydicom.Dataset) -> None:
    """C-STORE SEG to destination.dimse (host, port, ae_title) as the node's AE title."""
    from pynetdicom import AE
    from pynetdicom.sop_class import SegmentationStorage  # type: ignore[attr-defined]

    target = settings.destination["dimse"]
    ae = AE(ae_title=settings.ae_title)
    ae.add_requested_context(SegmentationStorage, [seg.file_meta.TransferSyntaxUID])
    context = tls_context(settings.tls, server=False)
    tls = (context, target["host"]) if context else None
    assoc = ae.associate(target["host"], int(target["port"]), ae_title=target["ae_title"], tls_args=tls)
    if not assoc.is_established:
        raise ConnectionError(f"destination {target['ae_title']}@{target['host']}:{target['port']} refused")
    try:
        status = assoc.send_c_store(seg)
    finally:
        assoc.release()
    if not status or int(status.Status) not in (0x0000, 0xB000, 0xB007, 0xB006):
        raise ConnectionError(f"destination {target['ae_title']} answered C-STORE status {status}")


def web_client(section: dict):
    """A DICOMweb client for a section (url, token_env or user_env/password_env)."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    headers, basic = web_auth(section)
    session = requests.Session()
    if basic:
        session.auth = basic
    return DICOMwebClient(section["url"], session=session, headers=headers)


def store_web(section: dict, seg: pydicom.Dataset) -> None:
    """STOW-RS SEG to the DICOMweb service of SECTION."""
    web_client(section).store_instances([seg])

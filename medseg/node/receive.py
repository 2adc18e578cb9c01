"""Receiving: a C-STORE SCP (pynetdicom) that accepts the allow-listed AE titles only, and a DICOMweb poller
(QIDO-RS for new series, WADO-RS to retrieve them)."""

from __future__ import annotations

import logging
import time
from io import BytesIO

from medseg.node.jobs import FINAL
from medseg.node.send import web_client
from medseg.node.service import Node
from medseg.node.settings import tls_context
from medseg.utils.privacy import pseudonym

log = logging.getLogger(__name__)
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


def start_scp(node: Node):
    """Start the C-STORE SCP in background threads; returns the server (shutdown() stops it)."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    settings = node.settings
    ae = AE(ae_title=settings.ae_title)
    ae.require_calling_aet = list(settings.allowed_aes)  # any other calling AE: association rejected
    for storage in AllStoragePresentationContexts:
        ae.add_supported_context(str(storage.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)

    def on_store(event) -> int:
        try:
            dataset = event.dataset
            node.store(event.encoded_dataset(), str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID))
        except Exception as exc:  # not stored: the sender is told, and may send it again
            log.error("instance not stored (%s)", type(exc).__name__)
            return OUT_OF_RESOURCES
        return SUCCESS

    def on_rejected(event) -> None:
        log.warning("association from %s refused: calling AE title not allowed", event.assoc.requestor.address)

    handlers: list = [(evt.EVT_C_STORE, on_store), (evt.EVT_REJECTED, on_rejected)]
    context = tls_context(settings.tls, server=True)
    return ae.start_server((settings.host, int(settings.port)), block=False, evt_handlers=handlers, ssl_context=context)


class WebPoller:
    """Finds new series on a DICOMweb service and retrieves each once its instance count has settled."""

    SEEN = ("0020000D", "0020000E", "00080060", "00201209")  # study, series, modality, instances

    def __init__(self, node: Node) -> None:
        self.node = node
        self.section = node.settings.source["dicomweb"]
        self.client = web_client(self.section)
        self.counts: dict[str, tuple[int, float]] = {}  # series pseudonym -> (instances, since when)
        self.last_poll = 0.0

    def poll(self) -> list[str]:
        """One QIDO-RS round (at most every poll_s seconds); returns the series retrieved and processed."""
        if time.monotonic() - self.last_poll < float(self.section.get("poll_s", 10)):
            return []
        self.last_poll = time.monotonic()
        done = []
        for found in self.client.search_for_series(fields=["NumberOfSeriesRelatedInstances"]):
            values = {tag: (found.get(tag, {}).get("Value") or [None])[0] for tag in self.SEEN}
            study, uid, modality, count = (values[t] for t in self.SEEN)
            if not uid or modality == "SEG":
                continue
            series = pseudonym(uid)
            row = self.node.jobs.get(series, self.node.model.sha256)
            if row is not None and row["state"] in FINAL and int(count or 0) <= int(row["instances"]):
                continue  # finished, and the PACS holds no instance more: nothing new to segment
            seen, since = self.counts.get(series, (-1, time.monotonic()))
            if seen != count:
                self.counts[series] = (count, time.monotonic())
                continue
            if time.monotonic() - since < self.node.settings.quiet_s:
                continue
            self.retrieve(study, uid)
            self.node.process(series)
            done.append(series)
        return done

    def retrieve(self, study: str, uid: str) -> None:
        """WADO-RS every instance of a series into the spool."""
        for dataset in self.client.retrieve_series(study, uid):
            buffer = BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            self.node.store(buffer.getvalue(), uid, str(dataset.SOPInstanceUID))

"""medseg-node: receive series from a modality or PACS, segment them on CPU, send DICOM SEG back.

    medseg-node serve CONFIG          # C-STORE SCP (and DICOMweb polling where configured) until stopped
    medseg-node status CONFIG         # the job table: one line per series (pseudonyms), its state and reason
    medseg-node retry CONFIG SERIES   # put a failed series (its pseudonym) back in the queue

CONFIG is a YAML file (medseg.node.settings). Logs go to the console and SPOOL/node.log; they and the
job table name series by keyed pseudonym only.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from collections.abc import Sequence
from datetime import datetime

from medseg.node.jobs import JobTable
from medseg.node.settings import read_settings
from medseg.utils.cli import run_cli
from medseg.utils.privacy import PseudonymousFormatter

log = logging.getLogger("medseg.node")


def serve(config: str, once: bool = False) -> None:
    """Run the node: resume pending series, then receive, process and clean up until SIGTERM or SIGINT."""
    from medseg.node.receive import WebPoller, start_scp
    from medseg.node.service import Node

    settings = read_settings(config)
    node = Node(settings)
    handler = logging.FileHandler(settings.spool / "node.log")
    handler.setFormatter(PseudonymousFormatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stopping.append(number))
    server = start_scp(node)
    poller = WebPoller(node) if settings.source.get("dicomweb") else None
    log.info(
        "%s listening on %s:%s, model %s (%s)",
        settings.ae_title,
        settings.host,
        settings.port,
        node.model.name,
        node.model.sha256[:12],
    )
    try:
        while not stopping:
            if poller is not None:
                poller.poll()
            node.process_ready()
            node.clean()
            if once:
                break
            time.sleep(0.5)
    finally:
        server.shutdown()
        log.info("%s stopped", settings.ae_title)


def status(config: str) -> str:
    """The job table as text, one line per series."""
    settings = read_settings(config)
    rows = JobTable(settings.spool / "jobs.sqlite").all()
    lines = [f"{'series':<18}{'state':<12}{'instances':>10}  {'updated':<20}reason"]
    for row in rows:
        when = datetime.fromtimestamp(row["updated_at"]).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{row['series']:<18}{row['state']:<12}{row['instances']:>10}  {when:<20}{row['reason']}")
    return "\n".join(lines)


def retry(config: str, series: str) -> int:
    """Put a failed series back; raises when nothing was failed under that pseudonym."""
    settings = read_settings(config)
    count = JobTable(settings.spool / "jobs.sqlite").retry(series)
    if not count:
        raise ValueError(f"series {series}: no failed job under that pseudonym (medseg-node status lists them)")
    return count


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="medseg-node", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "status", "retry"):
        sub = commands.add_parser(name)
        sub.add_argument("config")
        if name == "retry":
            sub.add_argument("series", help="the series' pseudonym, as medseg-node status shows it")
        sub.add_argument("--debug", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if args.command == "serve":
        run_cli("medseg-node", args.debug, lambda: serve(args.config))
    elif args.command == "status":
        print(run_cli("medseg-node", args.debug, lambda: status(args.config)))
    else:
        run_cli("medseg-node", args.debug, lambda: retry(args.config, args.series))
        print(f"series {args.series}: queued again")


if __name__ == "__main__":
    main()

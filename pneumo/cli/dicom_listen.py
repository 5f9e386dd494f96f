"""`pneumo dicom-listen`: receive radiographs from a PACS or modality over DICOM and send the
findings back (serving/dicom/)."""

from __future__ import annotations

import argparse
import signal
import threading

from pneumo.cli import Command, arg, load_settings_of, workspace_of
from pneumo.cli.package import MODEL_SOURCE_ARGS

SOURCE_ARGS = MODEL_SOURCE_ARGS  # which model: the registry's champion by default
NODE_ARGS = (
    arg("--destination", metavar="AE@HOST:PORT",
        help="where results go by C-STORE (default: dicom.destination)"),
    arg("--stow-url", metavar="URL", help="a DICOMweb root for STOW-RS (default: dicom.stow_url)"),
)  # fmt: skip


def overrides(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, object]:
    """``dicom.*`` settings given on the command line."""
    given = {name: getattr(args, name, None) for name in names}
    return {f"dicom.{name}": value for name, value in given.items() if value is not None}


def run(args: argparse.Namespace) -> int:
    from serving.dicom.listener import Listener
    from serving.dicom.start import open_node

    names = ("ae_title", "host", "port", "destination", "stow_url", "metrics_port")
    settings = load_settings_of(args, overrides(args, names))
    node = open_node(settings, workspace_of(args), args.from_workspace, args.model_version)
    listener = Listener(node, settings.dicom).start()
    dicom = settings.dicom
    if dicom.metrics_port:
        import prometheus_client

        prometheus_client.start_http_server(dicom.metrics_port, addr=dicom.host)
    print(f"listening as {dicom.ae_title} on {dicom.host}:{listener.port}"
          f"{f', /metrics on port {dicom.metrics_port}' if dicom.metrics_port else ''}; "
          f"results to {', '.join(node.outbox.targets) or 'nowhere (no dicom.destination)'}; "
          "Ctrl-C stops", flush=True)  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()
    return 0


COMMAND = Command(
    "dicom-listen",
    help="receive CR/DX radiographs by DICOM C-STORE and send back a report and an overlay",
    description=(
        "A DICOM Storage SCP: a PACS or modality sends chest radiographs to AE title "
        "dicom.ae_title on dicom.port; each is scored like /predict (same decoding, model, guard "
        "and decision), logged in the prediction store with its Study/Series/SOP Instance UIDs, "
        "and its results (a DICOM Structured Report and a Grad-CAM Secondary Capture, in the "
        "source study) are sent to dicom.destination by C-STORE and/or dicom.stow_url by "
        "STOW-RS, retried until delivered. Other SOP classes and undecodable instances get a "
        "failure status with the reason."
    ),
    handler=run,
    arguments=(
        *SOURCE_ARGS,
        arg("--ae-title", help="the listener's AE title (default: dicom.ae_title)"),
        arg("--host", help="address to listen on (default: dicom.host)"),
        arg("--port", type=int, help="DICOM port (default: dicom.port; 0 picks a free one)"),
        *NODE_ARGS,
        arg(
            "--metrics-port",
            type=int,
            help="Prometheus /metrics port (default: dicom.metrics_port; 0: none)",
        ),
    ),
)

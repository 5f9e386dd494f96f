"""`pneumo dicom-listen`: a DICOM Storage SCP (pynetdicom) that scores what the PACS sends.

C-ECHO answers at once. C-STORE of a CR or DX radiograph is scored by :class:`DicomNode`
(the /predict path) and answered Success once its results are queued; the outbox delivers them.
Everything else gets a failure status and one WARNING line with the reason, never a crash:

- other SOP classes (a report, a PDF, a CT slice): 0x0122, SOP class not supported;
- transfer syntaxes pydicom cannot decode here (JPEG Lossless, HTJ2K...): the presentation
  context is rejected at association (transfer syntax not supported) and logged;
- multi-frame, colour, absurd dimensions, damaged pixel data, deep sequences: 0xA900 / 0xA700 /
  0xC000 from the same checks as the HTTP route, with the reason in the Error Comment.

Each association runs in its own thread (pynetdicom); one that stalls is closed after
``dicom.network_timeout_s`` and holds nothing the others need. Model calls take turns.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom import Dataset
from pydicom import uid as uids
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    Verification,
)

from pneumo.config import DicomSettings
from serving.dicom.node import PROCESSING_FAILURE, SOP_CLASS_NOT_SUPPORTED, DicomNode, Refusal
from serving.dicom.outbox import metrics

log = logging.getLogger("pneumo.dicom")

RADIOGRAPHS = {
    str(ComputedRadiographyImageStorage): "CR",
    str(DigitalXRayImageStorageForPresentation): "DX",
    str(DigitalXRayImageStorageForProcessing): "DX (for processing)",
}
UNCOMPRESSED = [uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian, uids.ExplicitVRBigEndian]
COMPRESSED = [
    *uids.JPEGTransferSyntaxes,
    *uids.JPEGLSTransferSyntaxes,
    *uids.JPEG2000TransferSyntaxes,
    uids.RLELossless,
]
ERROR_COMMENT_CHARS = 64  # Error Comment is an LO


def decodable_transfer_syntaxes() -> list[str]:
    """Uncompressed, and the compressed syntaxes for which pydicom has a decoder installed
    (Pillow: JPEG baseline/extended and JPEG 2000; pyjpegls: JPEG-LS; pydicom: RLE)."""
    from pydicom.pixels import get_decoder

    found = list(UNCOMPRESSED)
    for syntax in COMPRESSED:
        try:
            if get_decoder(syntax).is_available:
                found.append(syntax)
        except NotImplementedError:
            pass
    return [str(s) for s in found]


def _status(status: int, reason: str = "") -> Dataset:
    answer = Dataset()
    answer.Status = status
    if reason:
        answer.ErrorComment = reason[:ERROR_COMMENT_CHARS]
    return answer


class Listener:
    """The Storage SCP around a :class:`DicomNode`; :meth:`start` returns once it listens."""

    def __init__(self, node: DicomNode, settings: DicomSettings) -> None:
        self.node = node
        self.settings = settings
        self.server: Any = None

    def application_entity(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_associations = self.settings.max_associations
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.settings.network_timeout_s
        ae.require_called_aet = True  # a PACS pointed at another AE title hears so at once
        ae.add_supported_context(Verification)
        syntaxes = decodable_transfer_syntaxes()
        for context in AllStoragePresentationContexts:
            # Non-radiograph classes are accepted uncompressed only to be told why they are refused.
            chosen = syntaxes if context.abstract_syntax in RADIOGRAPHS else UNCOMPRESSED
            ae.add_supported_context(context.abstract_syntax, chosen)
        return ae

    def start(self) -> Listener:
        handlers = [
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_ACCEPTED, self._log_rejected_contexts),
        ]
        address = (self.settings.host, self.settings.port)
        self.server = self.application_entity().start_server(address, block=False,
                                                             evt_handlers=handlers)  # fmt: skip
        self.node.outbox.start()
        log.info("DICOM listener %s on %s:%d (results to: %s)", self.settings.ae_title,
                 address[0], self.port,
                 ", ".join(self.node.outbox.targets) or "nowhere: set dicom.destination")  # fmt: skip
        return self

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def _log_rejected_contexts(self, event: Any) -> None:
        for context in event.assoc.rejected_contexts:
            log.warning("refused from %s: %s in %s (no decoder for that transfer syntax here; "
                        "send it uncompressed, JPEG baseline or JPEG 2000)",
                        event.assoc.requestor.ae_title, context.abstract_syntax.name,
                        ", ".join(str(s.name) for s in context.transfer_syntax))  # fmt: skip

    def handle_store(self, event: Any) -> Dataset | int:
        sender = str(event.assoc.requestor.ae_title).strip()
        sop_class = str(event.request.AffectedSOPClassUID)
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        if sop_class not in RADIOGRAPHS:
            name = getattr(uids.UID(sop_class), "name", sop_class)
            return self._refuse(sender, sop_uid, Refusal(SOP_CLASS_NOT_SUPPORTED, "not_a_radiograph",
                                f"pneumo reads CR/DX chest radiographs, not {name}"))  # fmt: skip
        try:
            self.node.score(event.encoded_dataset(), "c-store", sender)
        except Refusal as refusal:
            return self._refuse(sender, sop_uid, refusal)
        except Exception as exc:  # a fault of ours: the sender may retry, the listener lives on
            log.exception("scoring %s from %s failed", sop_uid, sender)
            metrics()["instances"].labels("failed").inc()
            return _status(PROCESSING_FAILURE, f"pneumo failed: {type(exc).__name__}")
        return 0x0000

    def _refuse(self, sender: str, sop_uid: str, refusal: Refusal) -> Dataset:
        log.warning("refused %s from %s: 0x%04X %s: %s", sop_uid, sender, refusal.status,
                    refusal.code, refusal.reason)  # fmt: skip
        metrics()["instances"].labels("refused").inc()
        return _status(refusal.status, refusal.reason)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
        self.node.close()

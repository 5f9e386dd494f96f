"""The one place that knows the Kermany folder layout and its file-name conventions.

Layout: ``<root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.{jpeg,jpg,png}``. File names encode the patient:
``person12_bacteria_45.jpeg`` (patient ``person12``, bacterial), ``IM-0115-0001.jpeg`` and
``NORMAL2-IM-0427-0001-0002.jpeg`` (patients ``IM-0115`` and ``NORMAL2-IM-0427``).

Cases confirmed by clinicians (`pneumo feedback export`) join a dataset as
``fb-<patient key>-<image key>.jpeg``: their patient is ``fb-<patient key>`` (a hash of the
site's patient id, or of the request when none was given) and their source ``feedback``.
"""

from __future__ import annotations

import re

SPLITS: tuple[str, ...] = ("train", "val", "test")
NORMAL, PNEUMONIA = "NORMAL", "PNEUMONIA"  # the class names, as the dataset's folders spell them
CLASSES: tuple[str, ...] = (NORMAL, PNEUMONIA)
LABEL_INDEX: dict[str, int] = {NORMAL: 0, PNEUMONIA: 1}
SUBTYPES: tuple[str, ...] = ("none", "bacterial", "viral", "unknown")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpeg", ".jpg", ".png")
SOURCES: tuple[str, ...] = ("kermany", "feedback")  # where a manifest's image came from

_PERSON = re.compile(r"^(?P<patient>person\d+)_(?P<kind>bacteria|virus)_\d+(?:_\d+)*$", re.I)
_IM = re.compile(r"^(?P<patient>(?:NORMAL\d+-)?IM-\d+)(?:-\d+)+$", re.I)
_FEEDBACK = re.compile(r"^(?P<patient>fb-[0-9a-f]{12})-[0-9a-f]{12}$")


def parse_patient_id(stem: str) -> tuple[str, bool]:
    """Return ``(patient_id, parsed)`` for a file stem.

    Unknown name patterns fall back to the stem itself (one image = one patient), so a foreign
    dataset still splits safely; ``parsed`` is False then so callers can report it.
    """
    for pattern in (_PERSON, _IM, _FEEDBACK):
        match = pattern.match(stem)
        if match:
            return match.group("patient"), True
    return stem, False


def parse_subtype(stem: str, label: str) -> str:
    """Pneumonia subtype from the file name: bacterial, viral, unknown; ``none`` for normal."""
    if label == "NORMAL":
        return "none"
    lowered = stem.lower()
    if "bacteria" in lowered:
        return "bacterial"
    if "virus" in lowered:
        return "viral"
    return "unknown"


def feedback_name(patient_key: str, image_key: str) -> str:
    """The file stem of a confirmed case: ``fb-<12 hex>-<12 hex>`` (see :func:`parse_patient_id`)."""
    return f"fb-{patient_key[:12]}-{image_key[:12]}"


def parse_source(stem: str) -> str:
    """``feedback`` for a case exported from the prediction log, else ``kermany``."""
    return "feedback" if _FEEDBACK.match(stem) else "kermany"

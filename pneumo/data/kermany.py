"""The one place that knows the Kermany folder layout and its file-name conventions.

Layout: ``<root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.{jpeg,jpg,png}``. File names encode the patient:
``person12_bacteria_45.jpeg`` (patient ``person12``, bacterial), ``IM-0115-0001.jpeg`` and
``NORMAL2-IM-0427-0001-0002.jpeg`` (patients ``IM-0115`` and ``NORMAL2-IM-0427``).
"""

from __future__ import annotations

import re

SPLITS: tuple[str, ...] = ("train", "val", "test")
CLASSES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
LABEL_INDEX: dict[str, int] = {"NORMAL": 0, "PNEUMONIA": 1}
SUBTYPES: tuple[str, ...] = ("none", "bacterial", "viral", "unknown")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpeg", ".jpg", ".png")

_PERSON = re.compile(r"^(?P<patient>person\d+)_(?P<kind>bacteria|virus)_\d+(?:_\d+)*$", re.I)
_IM = re.compile(r"^(?P<patient>(?:NORMAL\d+-)?IM-\d+)(?:-\d+)+$", re.I)


def parse_patient_id(stem: str) -> tuple[str, bool]:
    """Return ``(patient_id, parsed)`` for a file stem.

    Unknown name patterns fall back to the stem itself (one image = one patient), so a foreign
    dataset still splits safely; ``parsed`` is False then so callers can report it.
    """
    for pattern in (_PERSON, _IM):
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

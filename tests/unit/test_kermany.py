from pathlib import Path

import pytest

from pneumo.data.kermany import IMAGE_SUFFIXES, parse_patient_id, parse_subtype


@pytest.mark.parametrize(
    ("stem", "patient"),
    [
        ("person12_bacteria_45", "person12"),
        ("person1_virus_6", "person1"),
        ("person1000_virus_1681", "person1000"),
        ("person1_virus_6_2", "person1"),
        ("IM-0115-0001", "IM-0115"),
        ("IM-0439-0001-0001", "IM-0439"),
        ("NORMAL2-IM-0427-0001", "NORMAL2-IM-0427"),
        ("NORMAL2-IM-0427-0001-0002", "NORMAL2-IM-0427"),
    ],
)
def test_known_patterns(stem: str, patient: str) -> None:
    assert parse_patient_id(stem) == (patient, True)


def test_unknown_pattern_falls_back_to_the_stem() -> None:
    assert parse_patient_id("scan_2024_07") == ("scan_2024_07", False)


def test_subtype() -> None:
    assert parse_subtype("person1_bacteria_1", "PNEUMONIA") == "bacterial"
    assert parse_subtype("person1_virus_6", "PNEUMONIA") == "viral"
    assert parse_subtype("IM-0115-0001", "NORMAL") == "none"
    assert parse_subtype("xray7", "PNEUMONIA") == "unknown"


def test_every_file_name_in_the_shared_data_parses(real_root: Path, originals_root: Path) -> None:
    names = [
        p
        for root in (real_root, originals_root)
        for p in root.rglob("*")
        if p.suffix in IMAGE_SUFFIXES
    ]
    assert len(names) > 5000
    unparsed = [p.name for p in names if not parse_patient_id(p.stem)[1]]
    assert unparsed == []
    # Pneumonia files carry their subtype; normal ones carry none.
    for p in names:
        subtype = parse_subtype(p.stem, p.parent.name)
        assert subtype in ({"bacterial", "viral"} if p.parent.name == "PNEUMONIA" else {"none"})

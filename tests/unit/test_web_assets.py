"""pneumo.web_assets: CDN addresses in HTML pages become relative paths to local copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo.web_assets import CDN_FILES, VENDORED, WebAssetsError, localize_html

JQUERY = "https://code.jquery.com/jquery-3.7.1.min.js"
FONT_AWESOME = "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css"
LOGO = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=1"


def _source(root: Path) -> Path:
    """A stand-in for vendor/: every mapped file, plus Font Awesome's fonts."""
    for relative in CDN_FILES.values():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(f"/* {relative} */")
    fonts = root / "@fortawesome/fontawesome-free/webfonts"
    fonts.mkdir(parents=True, exist_ok=True)
    (fonts / "fa-solid-900.woff2").write_bytes(b"font")
    return root


def test_pages_at_any_depth_point_at_local_copies(tmp_path: Path) -> None:
    site = tmp_path / "site"
    deep = site / "validations" / "suite" / "run" / "page.html"
    deep.parent.mkdir(parents=True)
    head = (
        f'<script src="{JQUERY}" integrity="sha384-x" crossorigin="anonymous"></script>'
        f'<link rel="stylesheet" href="{FONT_AWESOME}"><img src="{LOGO}">'
        '<a href="https://greatexpectations.io">GX</a>'
    )
    (site / "index.html").write_text(head)
    deep.write_text(head)
    unknown = localize_html(site, _source(tmp_path / "vendor"))

    assert unknown == []
    top, below = (site / "index.html").read_text(), deep.read_text()
    assert f'<script src="{VENDORED}/jquery/dist/jquery.min.js"></script>' in top
    assert f'src="../../../{VENDORED}/jquery/dist/jquery.min.js"' in below
    assert "integrity" not in below and "crossorigin" not in below  # cannot hold for file://
    assert 'src="static/images/logo-long.png"' in top  # GX ships its logo in the site
    assert 'href="https://greatexpectations.io"' in top  # a link loads nothing: kept
    copied = site / VENDORED
    assert (copied / "jquery/dist/jquery.min.js").is_file()
    assert (copied / "@fortawesome/fontawesome-free/webfonts/fa-solid-900.woff2").is_file()
    assert not (copied / "vega").exists()  # only what the pages use


def test_unknown_scripts_are_reported_and_missing_copies_explained(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text('<script src="https://example.org/other.js"></script>')
    assert localize_html(site, _source(tmp_path / "vendor")) == ["https://example.org/other.js"]

    (site / "index.html").write_text(f'<script src="{JQUERY}"></script>')
    with pytest.raises(WebAssetsError, match="make vendor"):
        localize_html(site, tmp_path / "empty")

"""The JavaScript and CSS that pneumo's HTML reports load, vendored from npm so they work offline.

`dvc plots show` (through the committed template reports/dvc_plots_template.html) and the
Great Expectations Data Docs would load Vega, Bootstrap, jQuery and Font Awesome from CDNs and
render blank without the internet. `make vendor` (``python -m pneumo.web_assets``) fetches the
pinned npm packages once with `npm pack` into vendor/ (git-ignored); :func:`localize_html`
copies what a folder of HTML pages needs next to them and points the pages at the copies.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from pneumo.errors import PneumoError

log = logging.getLogger(__name__)

SOURCE_ROOT = Path(__file__).resolve().parents[1]
VENDOR_DIR = SOURCE_ROOT / "vendor"
VENDORED = "static/vendor"  # where a localized HTML folder keeps its copies

# npm package -> version. Vega serves both reports (DVC's specs are Vega-Lite 5); the others
# are the versions the Data Docs templates of great_expectations 1.x ask for.
PACKAGES = {
    "vega": "5.33.1",
    "vega-lite": "5.23.0",
    "vega-embed": "6.29.0",
    "jquery": "3.7.1",
    "popper.js": "1.12.9",
    "bootstrap": "4.3.1",
    "bootstrap-table": "1.19.1",
    "bootstrap-datepicker": "1.9.0",
    "@forevolve/bootstrap-dark": "1.1.0",
    "@fortawesome/fontawesome-free": "6.6.0",
}
FILTER_CONTROL = "dist/extensions/filter-control/bootstrap-table-filter-control"
# A CDN address -> the vendored file that replaces it (package/path inside the package).
CDN_FILES = {
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed/build/vega-embed.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": (
        "popper.js/dist/umd/popper.min.js"
    ),
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": (
        "bootstrap/dist/css/bootstrap.min.css"
    ),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": (
        "bootstrap/dist/js/bootstrap.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": (
        "bootstrap-table/dist/bootstrap-table.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": (
        "bootstrap-table/dist/bootstrap-table.min.js"
    ),
    f"https://unpkg.com/bootstrap-table@1.19.0/{FILTER_CONTROL}.css": (
        f"bootstrap-table/{FILTER_CONTROL}.css"
    ),
    f"https://unpkg.com/bootstrap-table@1.19.0/{FILTER_CONTROL}.min.css": (
        f"bootstrap-table/{FILTER_CONTROL}.min.css"
    ),
    f"https://unpkg.com/bootstrap-table@1.19.1/{FILTER_CONTROL}.min.js": (
        f"bootstrap-table/{FILTER_CONTROL}.min.js"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": (
        "bootstrap-datepicker/dist/css/bootstrap-datepicker.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": (
        "bootstrap-datepicker/dist/js/bootstrap-datepicker.min.js"
    ),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": (
        "@forevolve/bootstrap-dark/dist/css/bootstrap-prefers-dark.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "@fortawesome/fontawesome-free/css/all.min.css"
    ),
}
# Files a stylesheet loads by relative address (Font Awesome's fonts), copied along with it.
COMPANIONS = {
    "@fortawesome/fontawesome-free/css/all.min.css": "@fortawesome/fontawesome-free/webfonts"
}
# Images Great Expectations links from its web host but also ships in the site's static/images.
GX_IMAGES = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
# An element that loads from the internet; integrity and crossorigin cannot hold for a file://.
EXTERNAL_TAG = re.compile(r"<(script|link|img)\b[^>]*?\b(?:src|href)=\"(https?://[^\"]+)\"[^>]*>")
STRIPPED_ATTRIBUTES = re.compile(r'\s+(?:integrity|crossorigin)="[^"]*"')


class WebAssetsError(PneumoError):
    """The npm packages cannot be fetched or are not vendored yet."""


def _stamp(dest: Path, name: str) -> Path:
    return dest / name / ".pneumo-version"


def vendor(dest: Path = VENDOR_DIR) -> Path:
    """Unpack each pinned package into ``dest/<name>/`` (skipped when already there)."""
    npm = shutil.which("npm")
    missing = {n: v for n, v in PACKAGES.items() if not _is_vendored(dest, n, v)}
    if missing and npm is None:
        raise WebAssetsError("npm not found: install it (`apt-get install -y npm`), then retry")
    for name, version in missing.items():
        with tempfile.TemporaryDirectory(prefix="pneumo-npm-") as tmp:
            result = subprocess.run(
                [npm, "pack", f"{name}@{version}", "--pack-destination", tmp, "--silent"],
                capture_output=True,
                text=True,
                check=False,
            )
            tarballs = list(Path(tmp).glob("*.tgz"))
            if result.returncode != 0 or len(tarballs) != 1:
                detail = (result.stderr or result.stdout).strip().splitlines()[-1:]
                raise WebAssetsError(f"npm pack {name}@{version} failed: {' '.join(detail)}")
            target = dest / name
            shutil.rmtree(target, ignore_errors=True)
            with tarfile.open(tarballs[0]) as archive:
                archive.extractall(tmp, filter="data")
            shutil.copytree(Path(tmp) / "package", target)
        _stamp(dest, name).write_text(version)
        log.info("vendored %s@%s into %s", name, version, target)
    return dest


def _is_vendored(dest: Path, name: str, version: str) -> bool:
    stamp = _stamp(dest, name)
    return stamp.is_file() and stamp.read_text().strip() == version


def vendored(relative: str, source: Path = VENDOR_DIR) -> Path:
    """The vendored file ``package/path``; says how to get it when it is missing."""
    path = source / relative
    if not path.is_file():
        raise WebAssetsError(f"{path} not found: run `make vendor` to fetch the report assets")
    return path


def _copy(relative: str, site: Path, source: Path) -> None:
    target = site / VENDORED / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vendored(relative, source), target)
    if relative in COMPANIONS:
        folder = source / COMPANIONS[relative]
        shutil.copytree(folder, site / VENDORED / COMPANIONS[relative], dirs_exist_ok=True)


def localize_html(site: Path, source: Path = VENDOR_DIR) -> list[str]:
    """Point every page under ``site`` at local copies of its CDN files (copied into
    ``site/static/vendor``); returns the internet addresses left because no copy is known."""
    unknown: set[str] = set()
    used: set[str] = set()
    for page in sorted(site.rglob("*.html")):
        html = page.read_text(encoding="utf-8")
        depth = "../" * (len(page.relative_to(site).parts) - 1)

        def local(match: re.Match[str], depth: str = depth) -> str:
            tag, url = match.group(0), match.group(2)
            if url in CDN_FILES:
                used.add(CDN_FILES[url])
                address = f"{VENDORED}/{CDN_FILES[url]}"
            elif url.startswith(GX_IMAGES):
                address = "static/images/" + url.removeprefix(GX_IMAGES).split("?")[0]
            else:
                if match.group(1) != "link" or 'rel="stylesheet"' in tag:
                    unknown.add(url)  # a page link (<link rel="canonical">) loads nothing
                return tag
            return STRIPPED_ATTRIBUTES.sub("", tag.replace(url, depth + address))

        localized = EXTERNAL_TAG.sub(local, html)
        if localized != html:
            page.write_text(localized, encoding="utf-8")
    for relative in sorted(used):
        _copy(relative, site, source)
    if unknown:
        log.warning("%s still loads from the internet: %s", site, ", ".join(sorted(unknown)))
    return sorted(unknown)


if __name__ == "__main__":  # `make vendor`
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(vendor())
    except WebAssetsError as exc:
        print(f"vendor: error: {exc}", file=sys.stderr)
        sys.exit(1)

"""The scope check: is this a frontal paediatric chest radiograph, the only kind the model reads?

Three detectors on the features of the served network's one forward pass
(:class:`pneumo.models.features.WithFeatures`), combined in :class:`pneumo.inference.guard.Guard`:

- ``global``: class-conditional Mahalanobis distance on every block's mean activation (what the
  guard always had: photographs, documents, noise, inverted images);
- ``layout``: a Ledoit-Wolf Gaussian on where block 1's activations lie in a 4x4 grid. A child's
  chest sits small in a frame that also shows neck, arms and abdomen; an adult's fills the frame;
  a lateral view or a knee has another shape altogether. One-class: it needs no foreign images;
- ``kinds``: when real out-of-scope radiographs are given (``data.scope_root``: adults, laterals,
  other body parts, each with its source and licence in a manifest), a multinomial logistic
  regression on the early blocks' layout, telling in-scope from each out-of-scope kind, so a
  referral can say *why*: "an adult chest radiograph", "a lateral view".
- ``prior``: the same kind of classifier on the model's input pixels (a 16x16 layout, the grey
  histogram, a 16x16 edge layout: :func:`pixel_features`), which depend on no network weights.
  `pneumo scope-fit` fits it on the train split and the set and writes ``prior.json`` into
  ``data.scope_root``, committed: a clone without the images still ships a scope check that
  knows adults, laterals and other body parts (the images stay outside git, the coefficients
  do not).

Each detector's score is put on one scale by the validation split (median 0, its own cut-off 1)
and the highest one decides; the cut-off flags ``guard.max_val_flag_rate`` of validation.
What each detector catches is measured per source, the kind classifier refitted without that
source (leave one source out), in ``metrics/guard.json`` and ``reports/scope.md``.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

DETECTORS = ("global", "layout", "kinds", "prior")
IN_SCOPE = "in_scope"
LAYOUT_SEGMENT = "layout1"
KIND_SEGMENTS = ("layout0", "layout1", "layout2")
# What a radiologist is told when the kind classifier recognises what an image is.
KIND_REASONS = {
    "adult_frontal": "an adult chest radiograph (the model is for children aged one to five)",
    "lateral": "a lateral view (the model reads frontal chest radiographs)",
    "other_body_part": "not a chest radiograph (another body part)",
}
MANIFEST = "manifest.csv"
KIND_C = 0.001  # strong L2: ~900 negatives against ~2,000 columns (a held-out source measured it)
PRIOR_FILE = "prior.json"  # in data.scope_root, committed: the pixel classifier a clone ships
PRIOR_C = 0.1  # leave-one-source-out on the set: 0.01-1 flag the same; 0.1 keeps validation's tail
PIXEL_GRID = 16
PIXEL_BINS = 16
PIXELS_SEGMENT = "pixels"


@dataclass(frozen=True)
class ScopeSet:
    """Real out-of-scope radiographs at the model's size, with what each is and where it is from."""

    images: np.ndarray  # (N, S, S) uint8
    kinds: np.ndarray  # (N,) str
    sources: np.ndarray  # (N,) str
    licences: dict[str, str]  # source -> licence as its publisher states it
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def empty(cls, size: int) -> ScopeSet:
        none = np.array([], dtype=str)
        return cls(np.zeros((0, size, size), np.uint8), none, none, {})


def scope_files(root: Path) -> list[dict[str, str]]:
    """The set's rows: ``manifest.csv`` (path, kind, source, licence) when there is one, else
    ``<kind>/<source>/<file>`` folders with an unknown licence."""
    manifest = root / MANIFEST
    if manifest.is_file():
        with manifest.open(newline="") as handle:
            rows = [dict(r) for r in csv.DictReader(handle)]
        missing = {"path", "kind", "source"} - set(rows[0] if rows else {})
        if missing:
            from pneumo.errors import PneumoError

            raise PneumoError(f"{manifest} lacks the column(s) {sorted(missing)}")
        return rows
    from pneumo.data.kermany import IMAGE_SUFFIXES

    return [
        {"path": str(p.relative_to(root)), "kind": p.parts[-3], "source": p.parts[-2],
         "licence": "not recorded"}
        for p in sorted(root.glob("*/*/*")) if p.suffix.lower() in IMAGE_SUFFIXES
    ]  # fmt: skip


def load_scope_set(root: Path | None, size: int) -> ScopeSet:
    """Decode the set with the one preprocessing function; an absent folder is an empty set."""
    from pneumo.data.preprocess import ImageDecodeError, decode_radiograph

    if root is None or not Path(root).is_dir():
        return ScopeSet.empty(size)
    images, kinds, sources, skipped = [], [], [], 0
    licences: dict[str, set[str]] = {}
    for row in scope_files(Path(root)):
        try:
            images.append(decode_radiograph(Path(root) / row["path"], size))
        except (ImageDecodeError, OSError) as exc:
            skipped += 1
            log.warning("scope set: %s skipped (%s)", row["path"], exc)
            continue
        kinds.append(row["kind"])
        sources.append(row["source"])
        licences.setdefault(row["source"], set()).add(row.get("licence") or "not recorded")
    if not images:
        return ScopeSet.empty(size)
    stated = {source: "; ".join(sorted(found)) for source, found in licences.items()}
    return ScopeSet(np.stack(images), np.array(kinds), np.array(sources), stated, skipped)


def segment(features: np.ndarray, segments: dict[str, tuple[int, int]], *names: str) -> np.ndarray:
    return np.concatenate([features[:, slice(*segments[n])] for n in names], axis=1)


def fit_layout(train: np.ndarray) -> dict[str, torch.Tensor]:
    """One Gaussian for every in-scope image (no classes: an adult is neither NORMAL nor
    PNEUMONIA), its covariance shrunk (Ledoit-Wolf) because the dimensions near the sample count."""
    from sklearn.covariance import LedoitWolf

    mean, scale = train.mean(0), train.std(0) + 1e-6
    fitted = LedoitWolf().fit((train - mean) / scale)
    return {"mean": torch.as_tensor(mean, dtype=torch.float32),
            "scale": torch.as_tensor(scale, dtype=torch.float32),
            "precision": torch.as_tensor(fitted.precision_, dtype=torch.float32)}  # fmt: skip


def layout_scores(layout: dict[str, torch.Tensor], features: np.ndarray) -> np.ndarray:
    z = (torch.as_tensor(features, dtype=torch.float32) - layout["mean"]) / layout["scale"]
    return torch.sqrt(((z @ layout["precision"]) * z).sum(1).clamp_min(0)).double().numpy()


def fit_kinds(
    train: np.ndarray, negatives: np.ndarray, kinds: np.ndarray, c: float = KIND_C
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """In scope (the train split) against each out-of-scope kind, classes weighted equally."""
    from sklearn.linear_model import LogisticRegression

    names = [IN_SCOPE, *sorted(set(kinds.tolist()))]
    x = np.concatenate([train, negatives])
    y = np.concatenate([np.zeros(len(train), int), [names.index(k) for k in kinds]])
    mean, scale = x.mean(0), x.std(0) + 1e-6
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
    model.fit((x - mean) / scale, y)
    coef, intercept = model.coef_, model.intercept_
    if len(names) == 2:  # sklearn's binary form: one row for class 1
        coef, intercept = (
            np.vstack([-coef / 2, coef / 2]),
            np.array([-intercept[0], intercept[0]]) / 2,
        )
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return {"mean": as_t(mean), "scale": as_t(scale), "coef": as_t(coef),
            "intercept": as_t(intercept)}, names  # fmt: skip


def kind_probabilities(kinds: dict[str, torch.Tensor], features: np.ndarray) -> np.ndarray:
    z = (torch.as_tensor(features, dtype=torch.float32) - kinds["mean"]) / kinds["scale"]
    return torch.softmax(z @ kinds["coef"].T + kinds["intercept"], dim=1).double().numpy()


def out_of_scope_log_odds(probabilities: np.ndarray) -> np.ndarray:
    """log P(out of scope) - log P(in scope): the kind classifier's score (column 0 = in scope)."""
    p_in = np.clip(probabilities[:, 0], 1e-12, 1 - 1e-12)
    return np.log1p(-p_in) - np.log(p_in)


def kind_reason(kind: str) -> str:
    return KIND_REASONS.get(kind, f"like the out-of-scope '{kind}' radiographs it was shown")


def pixel_features(images: np.ndarray) -> np.ndarray:
    """What the pixel prior reads from the model's input (N, S, S) uint8: where the image is
    bright (a 16x16 grid, standardised per image), its grey histogram, and where its edges are
    (a 16x16 grid of mean gradient, relative to the image's mean). float32 (N, 528)."""
    x = np.asarray(images, dtype=np.float32) / 255.0
    n, side = x.shape[0], x.shape[1]
    if side % PIXEL_GRID:
        raise ValueError(f"images of {side} px: the pixel prior needs a multiple of {PIXEL_GRID}")
    block = side // PIXEL_GRID

    def grid(a: np.ndarray) -> np.ndarray:
        return a.reshape(n, PIXEL_GRID, block, PIXEL_GRID, block).mean((2, 4)).reshape(n, -1)

    layout = grid(x)
    layout = (layout - layout.mean(1, keepdims=True)) / (layout.std(1, keepdims=True) + 1e-3)
    edges = np.abs(np.diff(x, axis=1))[:, :, :-1] + np.abs(np.diff(x, axis=2))[:, :-1, :]
    edges = grid(np.pad(edges, ((0, 0), (0, 1), (0, 1))))
    edges = edges / (edges.mean(1, keepdims=True) + 1e-6)
    # Each grey level's bin, from the same float32 arithmetic as the pixels (a table of 256).
    levels = np.minimum((np.arange(256, dtype=np.float32) / 255.0 * PIXEL_BINS).astype(np.int64),
                        PIXEL_BINS - 1)  # fmt: skip
    bins = levels[np.asarray(images, dtype=np.uint8)].reshape(n, -1)
    bins += np.arange(n)[:, None] * PIXEL_BINS  # one histogram per image, in one count
    hist = np.bincount(bins.ravel(), minlength=n * PIXEL_BINS).reshape(n, PIXEL_BINS)
    hist = hist / (side * side)
    return np.concatenate([layout, hist, edges], axis=1).astype(np.float32)


def with_pixels(
    features: np.ndarray, images: np.ndarray, segments: dict[str, tuple[int, int]]
) -> np.ndarray:
    """The network's features with the pixel features appended, when ``segments`` has them."""
    if PIXELS_SEGMENT not in segments:
        return features
    return np.concatenate([np.asarray(features, np.float32), pixel_features(images)], axis=1)


def pixel_segments(segments: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """``segments`` with the pixel features' columns after the network's."""
    end = max(stop for _, stop in segments.values())
    width = 2 * PIXEL_GRID * PIXEL_GRID + PIXEL_BINS
    return {**segments, PIXELS_SEGMENT: (end, end + width)}


def set_digest(scope: ScopeSet) -> str:
    """What a prior was fitted on: the set's sources, kinds and pixels."""
    import hashlib

    digest = hashlib.sha256()
    for source, kind in zip(scope.sources.tolist(), scope.kinds.tolist(), strict=True):
        digest.update(f"{source}/{kind};".encode())
    digest.update(np.ascontiguousarray(scope.images).tobytes())
    return digest.hexdigest()


def save_prior(path: Path, prior: dict[str, torch.Tensor], names: list[str], scope: ScopeSet,
               image_size: int) -> None:  # fmt: skip
    """``prior.json``: the fitted pixel classifier and what it was fitted on (no image)."""
    import json

    from pneumo.workspace import atomic_path

    counts = {}
    for source, kind in zip(scope.sources.tolist(), scope.kinds.tolist(), strict=True):
        counts.setdefault(source, {"kind": kind, "n": 0})["n"] += 1
    payload = {
        "what": "pneumo's pixel scope prior (pneumo/inference/scope.py): refit with `pneumo scope-fit`",
        "format": 1, "image_size": image_size, "C": PRIOR_C, "names": names,
        "set": {"n": len(scope), "sha256": set_digest(scope), "sources": counts},
        **{key: prior[key].tolist() for key in ("mean", "scale", "coef", "intercept")},
    }  # fmt: skip
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1) + "\n")


def load_prior(path: Path, image_size: int) -> tuple[dict[str, torch.Tensor], list[str], dict]:
    """The committed prior, or nothing when it is absent or made for another image size."""
    import json

    if not path.is_file():
        return {}, [], {}
    payload = json.loads(path.read_text())
    if int(payload.get("image_size", 0)) != image_size:
        log.warning("%s was fitted on %s px images, the model reads %d: not used (run `pneumo "
                    "scope-fit`)", path, payload.get("image_size"), image_size)  # fmt: skip
        return {}, [], {}
    prior = {key: torch.as_tensor(payload[key], dtype=torch.float32)
             for key in ("mean", "scale", "coef", "intercept")}  # fmt: skip
    return prior, list(payload["names"]), dict(payload["set"])


def fit_prior_file(settings: Any, workspace: Any) -> dict[str, Any]:
    """`pneumo scope-fit`: the pixel prior from the train split (in scope) and the set in
    ``data.scope_root``, written to ``prior.json`` there (commit it: clones have no images)."""
    from pneumo.data.preprocess import load_arrays
    from pneumo.errors import PneumoError

    root = workspace.resolve(settings.data.scope_root)
    size = settings.preprocess.image_size
    scope = load_scope_set(root, size)
    if not len(scope):
        raise PneumoError(f"no out-of-scope radiographs in {root} (see its README): nothing to fit")
    train = load_arrays(workspace.arrays("train"))["images"]
    prior, names = fit_kinds(pixel_features(train), pixel_features(scope.images), scope.kinds,
                             PRIOR_C)  # fmt: skip
    save_prior(root / PRIOR_FILE, prior, names, scope, size)
    return {"path": str(root / PRIOR_FILE), "in_scope": len(train), "out_of_scope": len(scope),
            "kinds": names[1:]}  # fmt: skip

"""Network definitions and the one file format for trained weights.

Every network takes standardised images (N, 1, S, S) and returns one pneumonia logit per image,
shape (N,). A model file holds only tensors and JSON-able metadata, loaded with
``torch.load(weights_only=True)``, so opening a model file never runs code from it.

torch is imported inside the functions that need it: ``pneumo.config`` checks image sizes against
:func:`min_image_size` and must stay quick to import for every CLI command.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumo.errors import ConfigError, PneumoError
from pneumo.workspace import atomic_path

if TYPE_CHECKING:
    from torch import nn

FORMAT_VERSION = 1
PAPER_ARCHS: dict[str, int] = {f"paper_cnn{blocks}": blocks for blocks in (1, 2, 3, 4)}
ARCHITECTURES: tuple[str, ...] = (*PAPER_ARCHS, "resnet")
# The last feature map must keep at least this many pixels per side to hold any spatial context.
MIN_FINAL_SIDE = 2


class ModelFileError(PneumoError):
    """A model file is missing, damaged, or was written by an incompatible version of pneumo."""


def downsampling(arch: str, options: dict[str, Any] | None = None) -> int:
    """Total stride of the network: the input side is divided by this before the classifier."""
    options = options or {}
    if arch in PAPER_ARCHS:
        return 2 ** PAPER_ARCHS[arch]
    if arch == "resnet":
        return 2 ** (1 + len(options.get("widths", (32, 64, 128, 256))))
    raise ConfigError(f"unknown model.arch '{arch}': choose one of {', '.join(ARCHITECTURES)}")


def min_image_size(arch: str, options: dict[str, Any] | None = None) -> int:
    """Smallest input side the architecture can take (preprocess.image_size must reach it)."""
    return downsampling(arch, options) * MIN_FINAL_SIDE


def build_model(arch: str, image_size: int, members: int = 1, **options: Any) -> nn.Module:
    """Build an untrained network by name; options are the arch family's keys in params.yaml.

    ``members`` > 1 builds an :class:`~pneumo.models.ensemble.Ensemble` of that many networks.
    """
    import torch

    needed = min_image_size(arch, options)
    if image_size < needed:
        raise ConfigError(
            f"preprocess.image_size {image_size} is too small for model.arch '{arch}': it needs "
            f"at least {needed} px; raise preprocess.image_size or choose a shallower model.arch"
        )
    if members < 1:
        raise ConfigError(f"model.members must be at least 1, got {members}")
    try:
        networks = [_network(arch, image_size, options) for _ in range(members)]
    except TypeError as exc:
        raise ConfigError(f"invalid option for model.arch '{arch}': {exc}") from exc
    if members == 1:
        model = networks[0]
    else:
        from pneumo.models.ensemble import Ensemble

        model = Ensemble(networks)
    model.image_size = image_size  # lets inference reject images of the wrong size
    # channels_last lets oneDNN pick its fastest CPU convolutions (about 1.5-2x here).
    return model.to(memory_format=torch.channels_last)


def _network(arch: str, image_size: int, options: dict[str, Any]) -> nn.Module:
    if arch in PAPER_ARCHS:
        from pneumo.models.paper_cnn import PaperCNN

        return PaperCNN(PAPER_ARCHS[arch], image_size, **options)
    from pneumo.models.resnet import ResNet

    if "widths" in options:
        options = {**options, "widths": tuple(options["widths"])}
    return ResNet(**options)


def _check_json_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"model metadata must be JSON-able primitives: {exc}") from exc


def save_model(model: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Write weights + metadata atomically; metadata must name arch, image_size and options."""
    missing = {"arch", "image_size", "options"} - metadata.keys()
    if missing:
        raise ValueError(f"model metadata lacks {sorted(missing)}: load_model needs them")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {
        "format_version": FORMAT_VERSION,
        # JSON text, not nested containers: the restricted unpickler then only sees str + tensors.
        "metadata": json.dumps(_check_json_metadata(metadata)),
        "state_dict": state,
    }
    write_torch(payload, Path(path))


def write_torch(payload: Any, path: Path) -> None:
    """torch.save, atomically and byte-for-byte reproducible: saved to a file, torch names the
    archive's root folder after the (temporary, random) file name, so the same weights would
    hash differently on every run; through a buffer the root is always "archive"."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from a file written by :func:`save_model`; returned in eval mode."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} not found: train a model first (`pneumo train`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        metadata = json.loads(payload["metadata"])
        version = payload["format_version"]
        state = payload["state_dict"]
    except (
        pickle.UnpicklingError,
        RuntimeError,
        OSError,
        EOFError,
        KeyError,
        TypeError,
        ValueError,
    ) as exc:
        # UnpicklingError: the file holds pickled code, which weights_only loading refuses.
        raise ModelFileError(f"{path} is not a pneumo model file: {exc}") from exc
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format version {version}, this pneumo reads {FORMAT_VERSION}: retrain"
        )
    model = build_model(metadata["arch"], int(metadata["image_size"]),
                        int(metadata.get("members", 1)), **metadata["options"])  # fmt: skip
    model.load_state_dict(state)
    model.eval()
    return model, metadata


def conv_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The units a network is stacked from: conv+activation(+pool) groups and residual blocks.

    Containers holding other blocks are opened; a module that is not a plain container (a residual
    block), or a container of single layers (conv, norm, ReLU, pool), counts as one block. The
    explanations show them, and the input guard reads its features from them.
    """
    from torch import nn

    members = getattr(model, "members", None)
    if members is not None:  # an ensemble: every member's blocks, in order
        return [(f"members.{i}.{name}", block) for i, member in enumerate(members)
                for name, block in conv_blocks(member)]  # fmt: skip

    def has_conv(module: nn.Module) -> bool:
        return any(isinstance(m, nn.Conv2d) for m in module.modules())

    def walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
        for name, child in module.named_children():
            if not has_conv(child):
                continue
            full = f"{prefix}{name}"
            nested = any(next(c.children(), None) is not None for c in child.children())
            if isinstance(child, nn.Sequential | nn.ModuleList | nn.ModuleDict) and nested:
                yield from walk(child, f"{full}.")
            else:
                yield full, child

    return list(walk(model, ""))


def with_features(model: nn.Module) -> nn.Module:
    """``model`` as a module returning (logits, features): every convolution block's spatial mean.

    What the input guard measures distances on (pneumo/inference/guard.py); exportable to ONNX, so an
    exported network computes both in its one forward pass.
    """
    from pneumo.models.features import WithFeatures

    return WithFeatures(model)

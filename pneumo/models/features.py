"""A network that also returns its pooled block features (the input guard's view of an image)."""

from __future__ import annotations

import torch
from torch import nn

# The scope check's view of anatomy: the first LAYOUT_BLOCKS blocks' activations averaged over a
# LAYOUT_GRID x LAYOUT_GRID grid (plus their spatial spread), so where things lie in the frame
# counts, not only which textures occur. A child's chest sits small in a frame that also shows
# neck, arms and abdomen; an adult's fills it. Measured on real adult, lateral and other-body-part
# radiographs (reports/scope.md), the 4x4 layout of block 1 flagged 74-94 % of each source where the
# global block means flagged 57-71 %, at the same 2 % of validation.
LAYOUT_GRID = 4
LAYOUT_BLOCKS = 3


def guard_view(model: nn.Module) -> nn.Module:
    """The network whose blocks the guard reads: an ensemble's first member. Every member's
    features side by side would triple the dimensions the guard's covariance is estimated in
    from the same train split (a briefly trained 3-member ensemble in tests/model/test_guard.py
    then flagged 56 % of photographs, documents and noise, against 95 % and more with one member's
    blocks); one member sees the same images."""
    members = getattr(model, "members", None)
    return members[0] if members is not None else model


class WithFeatures(nn.Module):
    """(logits, features): the model's output, then each conv block's mean activation in order,
    then the layout of the first blocks (:data:`LAYOUT_GRID`), for the first member of an
    ensemble (:func:`guard_view`). :func:`feature_segments` says which columns are which."""

    def __init__(self, model: nn.Module) -> None:
        from pneumo.models import conv_blocks

        super().__init__()
        self.model = model
        self.blocks = [block for _, block in conv_blocks(guard_view(model))]
        self.image_size = getattr(model, "image_size", None)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        handles = [block.register_forward_hook(lambda _m, _i, output: captured.append(output))
                   for block in self.blocks]  # fmt: skip
        try:
            logits = self.model(pixels)
        finally:
            for handle in handles:
                handle.remove()
        maps = [output.float() for output in captured]
        means = [m.mean(dim=(2, 3)) for m in maps]
        # std over both spatial dims at once, not over a flattened copy: the same values in torch
        # (bit for bit), but the exported graph then needs no reshape of the largest maps, which
        # made the features cost more than the network itself in OpenVINO (1.6 -> 1.0 ms/image).
        layout = [
            torch.cat(
                [
                    nn.functional.adaptive_avg_pool2d(m, LAYOUT_GRID).flatten(1),
                    m.std(dim=(2, 3)),
                ],
                dim=1,
            )  # fmt: skip
            for m in maps[:LAYOUT_BLOCKS]
        ]
        return logits, torch.cat(means + layout, dim=1)


def feature_segments(model: nn.Module, image_size: int) -> dict[str, tuple[int, int]]:
    """Column ranges of :class:`WithFeatures`' output: ``means`` (every block's mean activation)
    and ``layout0``.. (each early block's grid), from one forward pass of a blank image."""
    view = guard_view(model)
    from pneumo.models import conv_blocks

    channels: list[int] = []
    handles = [block.register_forward_hook(lambda _m, _i, out: channels.append(int(out.shape[1])))
               for _, block in conv_blocks(view)]  # fmt: skip
    try:
        with torch.inference_mode():
            view(torch.zeros(1, 1, image_size, image_size))
    finally:
        for handle in handles:
            handle.remove()
    segments = {"means": (0, sum(channels))}
    start = sum(channels)
    for index, count in enumerate(channels[:LAYOUT_BLOCKS]):
        width = count * (LAYOUT_GRID * LAYOUT_GRID + 1)
        segments[f"layout{index}"] = (start, start + width)
        start += width
    return segments

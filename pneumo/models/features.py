"""A network that also returns its pooled block features (the input guard's view of an image)."""

from __future__ import annotations

import torch
from torch import nn


def guard_view(model: nn.Module) -> nn.Module:
    """The network whose blocks the guard reads: an ensemble's first member. Every member's
    features side by side would triple the dimensions the guard's covariance is estimated in
    from the same train split (a briefly trained 3-member ensemble in tests/model/test_guard.py
    then flagged 56 % of photographs, documents and noise, against 95 % and more with one member's
    blocks); one member sees the same images."""
    members = getattr(model, "members", None)
    return members[0] if members is not None else model


class WithFeatures(nn.Module):
    """(logits, features): the model's output and each conv block's mean activation, in order
    (the first member's, for an ensemble: :func:`guard_view`)."""

    def __init__(self, model: nn.Module) -> None:
        from pneumo.models import conv_blocks

        super().__init__()
        self.model = model
        self.blocks = [block for _, block in conv_blocks(guard_view(model))]
        self.image_size = getattr(model, "image_size", None)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        handles = [
            block.register_forward_hook(
                lambda _m, _i, output: captured.append(output.float().mean(dim=(2, 3)))
            )
            for block in self.blocks
        ]
        try:
            logits = self.model(pixels)
        finally:
            for handle in handles:
                handle.remove()
        return logits, torch.cat(captured, dim=1)

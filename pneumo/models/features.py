"""A network that also returns its pooled block features (the input guard's view of an image)."""

from __future__ import annotations

import torch
from torch import nn


class WithFeatures(nn.Module):
    """(logits, features): the model's output and each conv block's mean activation, in order."""

    def __init__(self, model: nn.Module) -> None:
        from pneumo.models import conv_blocks

        super().__init__()
        self.model = model
        self.blocks = [block for _, block in conv_blocks(model)]
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

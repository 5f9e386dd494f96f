"""The seed paper's baseline family: 1 to 4 conv+pool blocks, then a fully connected classifier.

Kept deliberately plain (no batch norm, flatten instead of pooling) so the baselines match the
paper's design; dropout guards the classifier of the deeper variants, as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

PAPER_CHANNELS: tuple[int, ...] = (32, 64, 128, 128)


def _conv_pool(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class PaperCNN(nn.Module):
    """``blocks`` conv+pool blocks -> flatten -> dense -> (dropout) -> one logit."""

    def __init__(
        self,
        blocks: int,
        image_size: int,
        hidden_units: int = 128,
        dropout: float = 0.5,
        channels: tuple[int, ...] = PAPER_CHANNELS,
    ) -> None:
        super().__init__()
        layers, in_channels = [], 1
        for out_channels in channels[:blocks]:
            layers.append(_conv_pool(in_channels, out_channels))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        side = image_size // 2**blocks
        # The paper uses dropout only once the network is deep enough to overfit (2+ blocks).
        use_dropout = blocks >= 2 and dropout > 0
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * side * side, hidden_units),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout) if use_dropout else nn.Identity(),
            nn.Linear(hidden_units, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).squeeze(1)

"""Several networks of one architecture trained side by side; the prediction is their mean logit.

Members differ by their random initialisation (and dropout), see the same batches, and each is
trained on its own loss: in training mode the forward pass returns every member's logit (N, M),
in evaluation mode their mean (N,). Averaging independently trained networks is the simplest
way to steady a model's ranking on data unlike its training set.
"""

from __future__ import annotations

import torch
from torch import nn


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([member(x) for member in self.members], dim=-1)
        return logits if self.training else logits.mean(dim=-1)

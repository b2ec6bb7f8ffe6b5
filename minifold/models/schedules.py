"""Learning-rate schedules that torch lacks as one object, built like torch's (optimizer first)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.1
) -> LambdaLR:
    """Linear warm-up from 0 over the first `warmup_fraction` of the steps, then cosine decay to 0.

    The usual companion of a learning rate scaled up with the batch (Goyal et al.
    2017): the early steps of a freshly initialised network take the full rate badly.

    Args:
        optimizer: its groups' `lr` is the peak rate
        total_steps: steps of the whole fit (the module fills it in from the trainer)
        warmup_fraction: share of the steps spent warming up, in [0, 1)
    """
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction is {warmup_fraction}; it must be in [0, 1)")
    if total_steps < 1:
        raise ValueError(f"total_steps is {total_steps}; it must be >= 1")
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)

"""Shared test settings: one torch thread, offline W&B, no network."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
torch.set_num_threads(1)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"

"""Adds the checkout's experiments/ folder to Hydra's search path (`experiment=NAME`)."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class MinifoldExperimentsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        experiments = Path(__file__).resolve().parents[2] / "experiments"
        if experiments.is_dir():
            search_path.append(provider="minifold-experiments", path=f"file://{experiments}")

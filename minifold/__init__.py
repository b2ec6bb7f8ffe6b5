"""minifold: generate toy shapes, predict their distances, fold them back."""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

# The Hydra tree, shipped inside the package (package data), so an installed wheel runs.
CONFIG_DIR = Path(__file__).resolve().parent / "conf"


def _is_checkout(folder: Path) -> bool:
    """True where `folder` is minifold's source tree (not site-packages): its pyproject names it."""
    pyproject = folder / "pyproject.toml"
    if not pyproject.is_file():
        return False
    return re.search(r'^name\s*=\s*"minifold"\s*$', pyproject.read_text(), re.MULTILINE) is not None


def project_root() -> str:
    """Where `outputs/` lives: $MINIFOLD_ROOT, else the source checkout, else the cwd."""
    if "MINIFOLD_ROOT" in os.environ:
        return os.environ["MINIFOLD_ROOT"]
    checkout = Path(__file__).resolve().parent.parent
    return str(checkout) if _is_checkout(checkout) else os.getcwd()


def run_group(default: str) -> str:
    """Name grouping this job's runs: the sweep dir's name in a multirun, else `default`."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            sweep = Path(hydra_cfg.sweep.dir).name
            return sweep if sweep.endswith(default) else f"{default}-{sweep}"
    except ValueError:  # not inside a Hydra run (compose API, tests)
        pass
    return default


def _run_name(dim: int | None = None) -> str:
    """`${run_name:${dim}}`: model, dim and overrides, e.g. birnn-3d-bd0.3 (see minifold.naming)."""
    from minifold.naming import run_name

    return run_name(dim)


def _register_resolvers() -> None:
    """The OmegaConf resolvers minifold/conf/ uses (once per process)."""
    from omegaconf import OmegaConf

    resolvers: dict[str, Callable[..., Any]] = {
        "minifold_root": project_root,
        "run_group": run_group,
        "stages_name": lambda stages: "+".join(stages),
        # Token ids are PAD (0) plus one per letter.
        "vocab_size": lambda alphabet: len(str(alphabet)) + 1,
        "run_name": _run_name,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


# A bare torch install (e.g. a GPU bench machine) has no OmegaConf and no configs to resolve.
if importlib.util.find_spec("omegaconf") is not None:
    _register_resolvers()

# The notebook API, imported on first use so that `import minifold` stays light:
# minifold.fold (folding.fold itself, with its real signature), minifold.load, minifold.train.
_LAZY = {"fold": "minifold.folding", "load": "minifold.api", "train": "minifold.api"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'minifold' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["fold", "load", "train", "project_root", "CONFIG_DIR", "__version__"]

"""The Hydra tree ships as package data: every file of minifold/conf/ reaches an installed
package, and a built wheel runs outside the checkout."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

import minifold

ROOT = Path(__file__).resolve().parents[1]
SOURCE_CONF = ROOT / "minifold" / "conf"
# Left out of the copy a wheel is built from: outputs, environments, build leftovers.
NOT_SOURCE = (".git", ".venv", "outputs", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


def source_config_files() -> set[str]:
    """Every file under the checkout's minifold/conf/, relative to it."""
    return {
        path.relative_to(SOURCE_CONF).as_posix()
        for path in SOURCE_CONF.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def installed_config_files(folder=None, prefix: str = "") -> set[str]:
    """Every file under the imported package's conf/, read through importlib.resources."""
    folder = folder or importlib.resources.files("minifold") / "conf"
    found = set()
    for entry in folder.iterdir():
        if entry.is_dir():
            found |= installed_config_files(entry, f"{prefix}{entry.name}/")
        elif entry.is_file():
            found.add(f"{prefix}{entry.name}")
    return found


def test_package_data_patterns_cover_every_config_file():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["minifold"]
    package = ROOT / "minifold"
    shipped = {
        path.relative_to(SOURCE_CONF).as_posix()
        for pattern in patterns
        for path in package.glob(pattern)
        if path.is_file() and SOURCE_CONF in path.parents
    }
    data = {name for name in source_config_files() if not name.endswith(".py")}
    assert sorted(data - shipped) == []


def test_installed_package_holds_every_config_file():
    installed = installed_config_files()
    assert "config.yaml" in installed and "model/module/default.yaml" in installed
    assert sorted(source_config_files() - installed) == []
    assert minifold.CONFIG_DIR.is_dir()


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.mark.slow
def test_wheel_runs_outside_the_checkout(tmp_path):
    """Build a wheel from a copy of the checkout, install it (no deps: this environment has
    them) into a folder of its own, and run the console script from an unrelated folder."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    env = {k: v for k, v in os.environ.items() if k not in ("MINIFOLD_ROOT", "PYTHONPATH")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), "."], source, env)
    (wheel,) = dist.glob("minifold-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert sorted({f"minifold/conf/{name}" for name in source_config_files()} - names) == []

    _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], tmp_path, env)
    elsewhere.mkdir()
    # The wheel's package first on the path, ahead of any editable install of the checkout.
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", WANDB_MODE="offline")
    where = _run(
        [
            sys.executable,
            "-c",
            "import minifold; print(minifold.__file__, minifold.project_root())",
        ],
        elsewhere,
        env,
    ).split()
    assert Path(where[0]).is_relative_to(site) and Path(where[1]) == elsewhere
    script = [str(site / "bin" / "minifold")]
    assert "model/optimizer: adam, adamw" in _run([*script, "--help"], elsewhere, env)
    _run([*script, "debug=fast", "logger=csv", "threads=1"], elsewhere, env)
    (run_dir,) = (elsewhere / "outputs" / "runs").iterdir()
    assert (run_dir / "metrics.json").is_file() and (run_dir / "report.md").is_file()

"""What a run prints: a short config header, rich progress bars, and no known noise.

The full config tree always goes to the run dir (config_tree.txt, config.yaml);
the console gets the choices and overrides that make this run what it is, unless
`extras.print_config=tree` asks for the whole tree.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, cast

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from minifold.atomic import write_text
from minifold.naming import RunIdentity, run_name

console = Console()
PRINT_CONFIG_OPTIONS = ("choices", "tree", "none")
TREE_ORDER = ("generator", "data", "model", "trainer", "folder", "logger", "callbacks", "paths")


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def quiet_known_noise() -> None:
    """Hide warnings and log lines that are known, harmless and repeated on every run.

    - Lightning's `isinstance(treespec, LeafSpec)` deprecation (torch >= 2.10 pytree);
    - Lightning's "💡 Tip: ... litlogger" advert;
    - Optuna's storage and MLflow's store migrations (alembic INFO lines);
    - matplotlib's "Animation.save using PillowWriter" INFO line;
    - W&B's banner and end-of-run history (WANDB_SILENT, as `make` sets it): the
      closing table names the W&B run dir instead.
    """
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    tip = _DropMessages(("💡 Tip",))
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(tip)
    for name in ("alembic", "mlflow.store.db.utils", "matplotlib.animation"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("WANDB_SILENT", "true")


def _extras(cfg: DictConfig, key: str, default):
    return OmegaConf.select(cfg, f"extras.{key}", default=default)


def choices_table(cfg: DictConfig, identity: RunIdentity) -> Table:
    """The run's name, its config-group choices (hydra's own left out) and overrides."""
    table = Table(title=f"minifold: {run_name(cfg.get('dim'), identity)}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for group, option in identity.choices.items():
        if option is not None and not group.startswith("hydra"):
            table.add_row(group, escape(option))
    table.add_row("dim", str(cfg.get("dim")))
    table.add_row("stages", escape(" ".join(cfg.get("stages") or [])))
    table.add_row("overrides", escape(" ".join(identity.overrides)) or "(none)")
    return table


def config_tree(cfg: DictConfig) -> Tree:
    """The resolved config as a rich tree, one branch per top-level key."""
    tree = Tree("config", guide_style="dim")
    # a DictConfig's container is a dict
    resolved = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    keys = [k for k in TREE_ORDER if k in resolved] + [k for k in resolved if k not in TREE_ORDER]
    for key in keys:
        value = resolved[key]
        branch = tree.add(f"[bold]{key}[/bold]")
        text = OmegaConf.to_yaml(value) if isinstance(value, dict | list) else str(value)
        branch.add(text.rstrip() or "null")
    return tree


def print_config(cfg: DictConfig, out_dir: Path) -> None:
    """Print the choices and overrides (or the tree); save the tree and config.yaml in out_dir."""
    if _extras(cfg, "ignore_warnings", True):
        quiet_known_noise()
    mode = str(_extras(cfg, "print_config", "choices")).lower()
    if mode in ("false", "null"):
        mode = "none"
    if mode == "true":
        mode = "tree"
    if mode not in PRINT_CONFIG_OPTIONS:
        raise ValueError(
            f"extras.print_config is {mode!r}; allowed are {list(PRINT_CONFIG_OPTIONS)}"
        )
    tree = config_tree(cfg)
    identity = RunIdentity.current()
    if mode == "tree":
        console.print(tree)
    elif mode == "choices":
        console.print(choices_table(cfg, identity))
    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None).print(tree)
    write_text(out_dir / "config_tree.txt", buffer.getvalue())
    resolved = OmegaConf.to_container(cfg, resolve=True)
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(resolved))
    if identity.choices:
        write_text(
            out_dir / "choices.yaml",
            OmegaConf.to_yaml({"choices": identity.choices, "overrides": identity.overrides}),
        )


@contextlib.contextmanager
def progress(enabled: bool = True) -> Iterator[Progress]:
    """A transient rich progress display (disabled: the same object, drawing nothing)."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not enabled,
    )
    with bar:
        yield bar


# ------------------------------------------------------------------------------ CLI
# Set to 1 by the user: a ConfigError shows its traceback too (as Hydra's own variable does).
FULL_ERROR = "HYDRA_FULL_ERROR"
SHOW_TRACEBACK = "_MINIFOLD_SHOW_TRACEBACK"


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def leave_on_config_error(error: ValueError) -> NoReturn:
    """Inside a Hydra main, after the job logged `error` (a ConfigError) as one line.

    One run: exit with 1 here, before Hydra prints the traceback. A sweep job (or
    HYDRA_FULL_ERROR=1): re-raise, so Hydra marks the job failed and the sweep goes on.
    """
    if os.environ.get(SHOW_TRACEBACK) == "1" or _multirun():
        raise error
    raise SystemExit(1) from None


def run_cli(hydra_main: Callable[[], object]) -> None:
    """Call a `@hydra.main` function as a CLI: a person's mistake (ConfigError, or a config
    Hydra cannot compose) prints one line and exits with 1; a bug keeps its traceback.
    HYDRA_FULL_ERROR=1 shows every traceback."""
    from hydra.errors import CompactHydraException

    from minifold.errors import ConfigError

    show = os.environ.get(FULL_ERROR) == "1"
    os.environ[SHOW_TRACEBACK] = "1" if show else "0"
    # Exceptions come back here rather than to Hydra's trimmed-traceback printer.
    os.environ[FULL_ERROR] = "1"
    try:
        hydra_main()
    except (ConfigError, CompactHydraException) as error:
        if show:
            raise
        cause = error.__cause__
        extra = f": {cause}" if isinstance(error, CompactHydraException) and cause else ""
        print(f"error: {error}{extra}".replace("\n", " "), file=sys.stderr)
        sys.exit(1)

"""Names that tell runs apart: built from Hydra's choices and command-line overrides.

`birnn-3d-bd0.3` is the run of `model=birnn dim=3 generator.back_discount=0.3`. The
same name labels the W&B run, the run dir and the sweep summary's rows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

# Overrides that say where or how a run is recorded, not what it computes.
UNNAMED_KEYS: tuple[str, ...] = ("hydra", "paths", "logger", "experiment", "hparams_search")
UNNAMED_KEYS += ("ckpt_path", "fold", "extras", "publish", "task_name", "tags", "threads")
UNNAMED_KEYS += ("callbacks", "stages")
# Short forms of long override keys (the last part of the dotted key).
SHORT_KEYS = {
    "back_discount": "bd",
    "batch_size": "bs",
    "max_epochs": "ep",
    "num_train": "n",
    "learning_rate": "lr",
    "max_iter": "it",
    "sequence": "seq",
}
LONGEST_VALUE = 12
LONGEST_NAME = 80


@dataclass(frozen=True)
class RunIdentity:
    """What distinguishes a run: its config-group choices and command-line overrides."""

    choices: dict[str, str | None] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def current(cls) -> RunIdentity:
        """The identity of the running Hydra job; empty outside one (compose API, tests)."""
        try:
            from hydra.core.hydra_config import HydraConfig

            hydra_cfg = HydraConfig.get()
        except ValueError:
            return cls()
        choices = {
            str(k): (None if v is None else str(v)) for k, v in hydra_cfg.runtime.choices.items()
        }
        return cls(choices=choices, overrides=[str(o) for o in hydra_cfg.overrides.task])

    def override_pairs(self) -> list[tuple[str, str]]:
        """Overrides as (key, value), without `+`/`~` prefixes or Hydra's own keys."""
        pairs = []
        for override in self.overrides:
            key, _, value = override.partition("=")
            pairs.append((key.lstrip("+~"), value))
        return pairs


def _short_value(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        text = value.strip("'\"[]").replace(",", "+")
        return text if len(text) <= LONGEST_VALUE else text[: LONGEST_VALUE - 1] + "~"
    if not math.isfinite(number):  # nan / inf: named as given (validation refuses them later)
        return str(number)
    if number == int(number) and "." not in value and "e" not in value.lower():
        return str(int(number))
    return f"{number:.3g}"


def run_name(dim: int | str | None = None, identity: RunIdentity | None = None) -> str:
    """A short, file-name-safe label: model, dim, then each other override, e.g. `birnn-3d-bd0.3`.

    Group choices given on the command line add their option (`model/head=distogram` ->
    `distogram`); value overrides add a short key and the value (`data.batch_size=64` -> `bs64`).
    """
    identity = identity or RunIdentity.current()
    parts = []
    model = identity.choices.get("model")
    if model:
        parts.append(model)
    if dim is not None:
        parts.append(f"{dim}d")
    for key, value in identity.override_pairs():
        root = key.split(".")[0].split("/")[0]
        if key in ("model", "dim") or root in UNNAMED_KEYS:
            continue
        if key in identity.choices:  # a config group: its option says it all
            parts.append(_short_value(value))
        else:
            last = key.split(".")[-1]
            parts.append(SHORT_KEYS.get(last, last) + _short_value(value))
    name = "-".join(parts) or "run"
    name = re.sub(r"[^A-Za-z0-9_.+~=-]", "_", name)
    return name[:LONGEST_NAME]

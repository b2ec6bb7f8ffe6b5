"""Checkpoints: read one safely, compare its model with the config, load it.

A checkpoint is the truth about its weights; the config is what config.yaml records.
Rather than quietly run one while recording the other, a checkpoint whose model
differs from the config in any setting that shapes it is refused, naming each key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from omegaconf import DictConfig, OmegaConf

from minifold.errors import ConfigError

if TYPE_CHECKING:  # types only: the model module loads Lightning
    from minifold.models.module import DistanceModule


# Settings a checkpoint's weights depend on: compared with the config, leaf by leaf.
# Left out: what only steers training (dropout, the loss) and max_distance, which
# training replaces by the train split's largest distance. max_len is not compared:
# a longer generator.max_len only asks the model for longer sequences.
MODEL_SHAPING = ("dim", "alphabet", "head", "net")
TRAINING_ONLY = {
    "net": ("dropout",),
    "head": ("loss", "huber_delta", "relative_power", "relative_offset", "max_distance"),
}


def read_checkpoint(ckpt_path: str | Path) -> dict:
    """The hyperparameters of a minifold checkpoint; ConfigError if the file is not one.

    Loads with `weights_only=True` (minifold checkpoints hold plain types and tensors),
    so a random or foreign file is refused without running any of its code.
    """

    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path {ckpt_path} does not exist; give a .ckpt file from a run")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's own message advises unsafe loading: not repeated
        raise ConfigError(
            f"ckpt_path {ckpt_path} is not a minifold checkpoint (it does not load as one: "
            f"{type(error).__name__}); give a .ckpt from <run>/checkpoints/"
        ) from error
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if (
        not isinstance(hparams, dict)
        or not isinstance(checkpoint.get("state_dict"), dict)
        or not isinstance(hparams.get("net"), dict)
        or not isinstance(hparams.get("head"), dict)
    ):
        raise ConfigError(
            f"ckpt_path {ckpt_path} is not a minifold checkpoint (no state_dict or model "
            "hyperparameters in it); give a .ckpt from <run>/checkpoints/"
        )
    return hparams


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        leaves = {}
        for key, value in node.items():
            leaves.update(_leaves(value, f"{prefix}.{key}"))
        return leaves
    return {prefix: node}


def _option_for(group: str, target: str) -> str | None:
    """The minifold/conf/<group> option whose `_target_` (model: its net's) is `target`, if any."""
    folder = Path(__file__).resolve().parent / "conf" / group
    for path in sorted(folder.glob("*.yaml")):
        own = OmegaConf.load(path)
        found = OmegaConf.select(own, "net._target_" if group == "model" else "_target_")
        if found == target:
            return path.stem
    return None


def checkpoint_differences(hparams: dict, cfg: DictConfig) -> list[str]:
    """Every model-shaping setting where the checkpoint and the config disagree, root causes
    first: `dim=2 in the checkpoint, dim=3 in the config`."""
    model_cfg: dict[str, Any] = {}
    if "model" in cfg:  # a DictConfig's container is a dict
        model_cfg = cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True))
    current = {
        "dim": cfg.get("dim"),
        "alphabet": OmegaConf.select(cfg, "generator.alphabet"),
        "head": model_cfg.get("head"),
        "net": model_cfg.get("net"),
    }
    differences = []
    for key in MODEL_SHAPING:
        saved, wanted = hparams.get(key), current[key]
        if saved is None or wanted is None:
            continue
        if key in ("dim", "alphabet"):
            if saved != wanted:
                differences.append(f"{key}={saved!r} in the checkpoint, {key}={wanted!r} here")
            continue
        group = "model" if key == "net" else "model/head"
        if saved.get("_target_") != wanted.get("_target_"):
            option = _option_for("model" if key == "net" else "model/head", saved["_target_"])
            hint = f" ({group}={option})" if option else ""
            differences.append(
                f"model.{key}._target_={saved.get('_target_')}{hint} in the checkpoint, "
                f"{wanted.get('_target_')} here"
            )
            continue
        skip = TRAINING_ONLY[key]
        saved_leaves, wanted_leaves = (
            _leaves(saved, f"model.{key}"),
            _leaves(wanted, f"model.{key}"),
        )
        for leaf in sorted(set(saved_leaves) | set(wanted_leaves)):
            if leaf.rsplit(".", 1)[-1] in skip:
                continue
            old, new = saved_leaves.get(leaf, "<unset>"), wanted_leaves.get(leaf, "<unset>")
            if old != new and not _derived(leaf, differences):
                differences.append(f"{leaf}={old!r} in the checkpoint, {leaf}={new!r} here")
    return differences


def _derived(leaf: str, differences: list[str]) -> bool:
    """A net setting that follows dim or the alphabet, whose own difference is reported."""
    follows = {"model.net.chain_group_dim": "dim=", "model.net.vocab_size": "alphabet="}
    return leaf in follows and any(d.startswith(follows[leaf]) for d in differences)


def check_checkpoint_matches(hparams, cfg: DictConfig, ckpt_path: str) -> None:
    """Refuse a checkpoint whose model differs from the config in any setting that shapes it.

    The checkpoint is the truth about its weights; the config is what config.yaml records.
    Rather than quietly run one while recording the other, a mismatch is refused, naming
    each key with the checkpoint's value and the config's (dim, alphabet, the backbone and
    its sizes, the head and its bins). Accepts a model (its hparams) or a hparams dict.
    """

    hparams = dict(getattr(hparams, "hparams", hparams))
    differences = checkpoint_differences(hparams, cfg)
    if differences:
        shown = "; ".join(differences[:4])
        more = f" (and {len(differences) - 4} more)" if len(differences) > 4 else ""
        raise ConfigError(
            f"checkpoint {ckpt_path} was trained with other model settings: {shown}{more}; "
            "set them as in the checkpoint or give another checkpoint"
        )


def load_checked(ckpt_path: str | Path, cfg: DictConfig) -> DistanceModule:
    """The model in `ckpt_path`, in eval mode on the CPU, after checking it against `cfg`.

    Raises:
        ConfigError: the file is not a minifold checkpoint, its model differs from the
        config, or its weights do not load (an edited file)
    """
    check_checkpoint_matches(read_checkpoint(ckpt_path), cfg, str(ckpt_path))
    from minifold.models.module import DistanceModule

    try:
        model = DistanceModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    except Exception as error:  # hyperparameters fine, weights not (an edited file)
        raise ConfigError(
            f"ckpt_path {ckpt_path} does not load as a minifold model "
            f"({type(error).__name__}: {str(error).splitlines()[0][:160]})"
        ) from error
    model.eval()
    return model

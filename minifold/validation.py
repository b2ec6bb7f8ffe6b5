"""Checks of a composed config before any work: types and ranges, stage plans, inputs.

`check_config(cfg)` raises `ConfigError` naming the key, its value and what is
allowed. It runs before data generation or training, so nothing is refused
after minutes of work. The layers:

1. `CONSTRAINTS`: one table of what each setting may be (sklearn's
   `_parameter_constraints` idea): integers stay integers (`dim=2.5` is refused,
   not truncated), numbers are finite.
2. Every float under generator, data, model, folder and trainer must be finite,
   listed in the table or not: NaN or inf makes no sense in any of them.
3. Combinations: lengths, enough distinct sequences, stages that can run
   (report needs results, fold/evaluate need a model), sequence and fold.input
   modes, the folder's potential against the model's head.
4. The objects themselves (generator, data module, model, folder) are built
   once, cheaply, so their own argument checks fire now rather than after training.
5. The checkpoint given as ckpt_path is read and compared with the config
   (minifold.checkpoints), and a `sequence=` is checked against the generator's
   alphabet and the model's largest length: `validate(cfg)` runs every layer.

The constraint kinds of the table (Integer, Number, ...) are in minifold.constraints.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from minifold import checkpoints
from minifold.constraints import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    SIZE,
    Batches,
    Boolean,
    Constraint,
    Integer,
    Letters,
    Number,
    Options,
)
from minifold.errors import ConfigError

STAGES = ("generate", "train", "fold", "evaluate", "report")
# Stages that make something a report can show.
REPORTABLE = ("generate", "train", "fold", "evaluate")
# Config groups where every float is a real setting, so NaN or inf is always a mistake.
FINITE_GROUPS = ("generator", "data", "model", "folder", "trainer")
MAX_SEED = 2**32 - 1  # Lightning's seed_everything range


# What each setting may be; keys absent from a config (another model's net) are skipped.
CONSTRAINTS: dict[str, Constraint] = {
    "dim": Integer(2),
    "seed": Integer(0, MAX_SEED),
    "threads": Integer(1, none=True),
    "matmul_precision": Options(("highest", "high", "medium"), none=True),
    "generator.alphabet": Letters(),
    "generator.dim": Integer(2),
    "generator.embedding_dim": SIZE,
    "generator.hidden_size": SIZE,
    "generator.back_discount": Number(),
    "generator.reference_code": Boolean(),
    "generator.seed": Integer(0),
    "generator.min_len": SIZE,
    "generator.max_len": SIZE,
    "data.num_train": SIZE,
    "data.num_val": SIZE,
    "data.num_test": SIZE,
    "data.seed": Integer(0, MAX_SEED),
    "data.batch_size": SIZE,
    "data.num_long_test": SIZE,
    "data.online": Boolean(),
    "model.dim": Integer(2),
    "model.batch_size": SIZE,
    "model.lr_reference_batch_size": Integer(1, none=True),
    "model.lr_scaling": Options(("linear", "sqrt"), none=True),
    "model.scheduler_interval": Options(("step", "epoch")),
    "model.optimizer.lr": POSITIVE,
    "model.optimizer.weight_decay": NON_NEGATIVE,
    "model.net.dropout": Number(0, 1, high_open=True),
    "model.net.embed_dim": SIZE,
    "model.net.hidden_size": SIZE,
    "model.net.num_layers": SIZE,
    "model.net.pair_hidden": SIZE,
    "model.net.pair_dim": SIZE,
    "model.net.max_separation": SIZE,
    "model.net.chain_groups": COUNT,
    "model.net.chain_group_dim": SIZE,
    "model.net.d_model": SIZE,
    "model.net.num_heads": SIZE,
    "model.net.ff_dim": SIZE,
    "model.net.conv1d_layers": COUNT,
    "model.net.kernel_size_1d": SIZE,
    "model.net.channels": SIZE,
    "model.net.num_blocks": COUNT,
    "model.net.kernel_size": SIZE,
    "model.head.num_bins": Integer(2),
    "model.head.max_distance": POSITIVE,
    "model.head.margin": POSITIVE,
    "model.head.huber_delta": POSITIVE,
    "model.head.loss": Options(("mse", "l1", "huber", "relative")),
    "model.head.relative_power": NON_NEGATIVE,
    "model.head.relative_offset": NON_NEGATIVE,
    "trainer.max_epochs": Integer(1, none=True, extra=(-1,)),
    "trainer.max_steps": Integer(1, extra=(-1,)),
    "trainer.log_every_n_steps": SIZE,
    "trainer.check_val_every_n_epoch": Integer(1, none=True),
    "trainer.gradient_clip_val": Number(0, none=True),
    "trainer.limit_train_batches": Batches(1),
    "trainer.limit_val_batches": Batches(0),
    "trainer.limit_test_batches": Batches(1),
    "folder.seed": Integer(0),
}


def _select(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    """(present, resolved value) of a dotted key; an interpolation that fails is refused."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    if not isinstance(node, DictConfig) or leaf not in node:
        return False, None
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as error:  # an interpolation (e.g. ${vocab_size:...}) that cannot resolve
        raise ConfigError(f"{key} cannot be resolved: {error}") from error
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    return True, value


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def check_constraints(cfg: DictConfig, constraints: dict[str, Constraint] = CONSTRAINTS) -> None:
    """Refuse the first setting outside its constraint, naming key, value and what is allowed."""
    for key, constraint in constraints.items():
        present, value = _select(cfg, key)
        if present and (problem := constraint.problem(value)):
            raise ConfigError(f"{key} is {_show(value)}; it must be {problem}")
    dilations = _select(cfg, "model.net.dilations")[1]
    if dilations is not None and (
        not isinstance(dilations, list) or any(Integer(1).problem(d) for d in dilations)
    ):
        raise ConfigError(
            f"model.net.dilations is {dilations!r}; it must be a list of integers >= 1"
        )
    max_time = _select(cfg, "trainer.max_time")[1]
    if isinstance(max_time, str) and not _is_duration(max_time):
        raise ConfigError(
            f"trainer.max_time is {max_time!r}; it must be DD:HH:MM:SS, e.g. 00:00:03:30, or null"
        )


def _is_duration(text: str) -> bool:
    parts = text.split(":")
    return len(parts) == 4 and all(part.isdigit() for part in parts)


def _floats(node: Any, prefix: str) -> Iterator[tuple[str, float]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _floats(value, f"{prefix}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _floats(value, f"{prefix}[{index}]")
    elif isinstance(node, float):
        yield prefix, node


def check_finite(cfg: DictConfig, groups: tuple[str, ...] = FINITE_GROUPS) -> None:
    """Refuse NaN or inf anywhere under `groups` (back_discount=nan would train a NaN model)."""
    for group in groups:
        node = cfg.get(group)
        if node is None:
            continue
        try:
            plain = OmegaConf.to_container(node, resolve=True)
        except Exception as error:
            raise ConfigError(f"{group} cannot be resolved: {error}") from error
        for key, value in _floats(plain, group):
            if not math.isfinite(value):
                raise ConfigError(f"{key} is {value}; it must be a finite number")


def distinct_sequences(letters: int, min_len: int, max_len: int, cap: int) -> int:
    """How many distinct sequences lengths min_len..max_len allow, counted up to `cap`."""
    total = 0
    for length in range(min_len, max_len + 1):
        total += letters**length if length * math.log2(max(letters, 2)) < 64 else cap
        if total >= cap:
            return cap
    return total


def check_data(cfg: DictConfig) -> None:
    """Lengths in order and enough distinct sequences for the splits."""
    generator = cfg.get("generator")
    if generator is None:
        return
    min_len, max_len = int(generator.min_len), int(generator.max_len)
    if min_len > max_len:
        raise ConfigError(
            f"generator.min_len is {min_len} but generator.max_len is {max_len}; "
            "min_len must be <= max_len"
        )
    data = cfg.get("data")
    if data is None:
        return
    wanted = sum(int(data.get(k) or 0) for k in ("num_train", "num_val", "num_test"))
    possible = distinct_sequences(len(str(generator.alphabet)), min_len, max_len, wanted)
    if possible < wanted:
        raise ConfigError(
            f"the splits ask for {wanted} distinct sequences but lengths {min_len}..{max_len} over "
            f"{len(str(generator.alphabet))} letters allow only {possible}; lower "
            "data.num_train / num_val / num_test or raise generator.max_len"
        )


def check_plan(cfg: DictConfig) -> None:
    """Stages, sequence, fold.input and ckpt_path together must describe a run that can work."""
    stages = cfg.get("stages")
    if not isinstance(stages, list | ListConfig) or not stages:
        raise ConfigError(f"stages is {_show(stages)}; give a list drawn from {list(STAGES)}")
    stages = [str(s) for s in stages]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages {unknown} are unknown; allowed stages are {list(STAGES)}")

    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None:
        if not isinstance(ckpt_path, str) or not ckpt_path.strip():
            raise ConfigError(
                f"ckpt_path is {_show(ckpt_path)}; give a checkpoint file "
                "(<run>/checkpoints/best.ckpt) or leave ckpt_path out"
            )
        path = Path(ckpt_path)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise ConfigError(f"ckpt_path {ckpt_path} {what}; give a .ckpt file from a run")

    sequence = cfg.get("sequence")
    fold_input = OmegaConf.select(cfg, "fold.input", default=None)
    if sequence is not None:
        if not isinstance(sequence, str) or not sequence.strip():
            raise ConfigError(
                f"sequence is {_show(sequence)}; give letters of generator.alphabet "
                f"({str(OmegaConf.select(cfg, 'generator.alphabet'))!r}), e.g. sequence=abcabc"
            )
    if fold_input is not None:
        if not isinstance(fold_input, str) or not fold_input.strip():
            raise ConfigError(f"fold.input is {_show(fold_input)}; give a .npy, .npz or .csv file")
        if not Path(fold_input).is_file():
            raise ConfigError(f"fold.input {fold_input} does not exist; give a .npy, .npz or .csv")
    if sequence is not None and fold_input is not None:
        raise ConfigError("sequence=... and fold.input=... are two different jobs; give one")
    if sequence is not None or fold_input is not None:
        mode = "sequence=..." if sequence is not None else "fold.input=..."
        if stages not in (list(STAGES), ["fold"]):
            raise ConfigError(
                f"{mode} runs on its own, not with stages={stages}: leave stages out "
                f"(or stages=[fold]), or drop {mode.split('=')[0]}"
            )
        if fold_input is not None and ckpt_path:
            raise ConfigError(
                "fold.input=... folds the matrix in that file; no model is used, so leave "
                "ckpt_path out (sequence=... folds a sequence with a checkpoint's model)"
            )
        if sequence is not None and not ckpt_path:
            raise ConfigError(
                "sequence=... needs a trained model: give ckpt_path=<run>/checkpoints/best.ckpt "
                "(train one first with stages=[generate,train])"
            )
        return

    if "report" in stages and not any(s in stages for s in REPORTABLE):
        raise ConfigError(
            f"stages={stages} has nothing to report: add the stages that make results, "
            "e.g. stages=[generate,report], or stages=[fold,evaluate,report] with ckpt_path"
        )
    needs_model = [s for s in ("fold", "evaluate") if s in stages]
    if needs_model and "train" not in stages and not ckpt_path:
        raise ConfigError(
            f"stages {needs_model} need a model: add stage train or give "
            "ckpt_path=<run>/checkpoints/best.ckpt"
        )
    if ckpt_path and not any(s in stages for s in ("train", "fold", "evaluate")):
        raise ConfigError(
            f"ckpt_path is given but stages={stages} never use a model; add train (to resume) "
            "or fold,evaluate (to evaluate it), or leave ckpt_path out"
        )


def check_head_and_folder(cfg: DictConfig, head_target: str | None) -> None:
    """folder.potential=distogram needs a distogram head (the config's or the checkpoint's)."""
    potential = OmegaConf.select(cfg, "folder.potential", default=None)
    if potential == "distogram" and head_target and not head_target.endswith("DistogramHead"):
        raise ConfigError(
            f"folder.potential=distogram needs a distogram head but the model's head is "
            f"{head_target.rsplit('.', 1)[-1]}; train with model/head=distogram or use folder=lbfgs"
        )


def check_objects(cfg: DictConfig, build_model: bool) -> None:
    """Build the generator, data module, folder (and model) once, so that their own checks
    refuse a bad setting now; nothing is generated or trained."""
    from hydra.utils import instantiate

    groups = ["data", "folder"] + (["model"] if build_model else [])
    for group in groups:
        if cfg.get(group) is None:
            continue
        try:
            instantiate(cfg[group])
        except Exception as error:
            cause: BaseException = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            if isinstance(cause, ConfigError):
                raise cause from error
            raise ConfigError(f"{group} settings are refused: {cause}") from error


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked from the config alone (the checkpoint comes after)."""
    check_constraints(cfg)
    check_finite(cfg)
    check_data(cfg)
    check_plan(cfg)


def check_sequence(cfg: DictConfig, hparams: dict[str, Any] | None = None) -> None:
    """Refuse a sequence the generator or the model cannot take (letters, length), before work.

    `hparams`: the checkpoint's; its `max_len` caps the length unless it is None (a model
    that takes any length).
    """
    from minifold.data.alphabet import Alphabet

    sequence = cfg.get("sequence")
    try:
        Alphabet(str(cfg.generator.alphabet), max_len=int(cfg.generator.max_len)).validate(sequence)
    except ValueError as error:
        raise ConfigError(f"{error} (sequence={sequence})") from error
    max_len = (hparams or {}).get("max_len")
    if max_len is not None and len(sequence) > int(max_len):
        raise ConfigError(
            f"sequence has length {len(sequence)}; this model takes at most {max_len}"
        )


def validate(cfg: DictConfig) -> None:
    """Reject settings that cannot work before any work is done:
    the config alone, then the checkpoint against it, then the objects it builds."""
    check_config(cfg)
    ckpt_path = cfg.get("ckpt_path")
    fold_input = cfg.get("fold", {}).get("input")
    hparams = None
    if ckpt_path and not fold_input:
        hparams = checkpoints.read_checkpoint(ckpt_path)
        checkpoints.check_checkpoint_matches(hparams, cfg, ckpt_path)
    if cfg.get("sequence") is not None:
        check_sequence(cfg, hparams)
    head = hparams["head"] if hparams else cfg.get("model", {}).get("head", {})
    check_head_and_folder(cfg, (head or {}).get("_target_"))
    trains = "train" in cfg.stages and cfg.get("sequence") is None and not fold_input
    check_objects(cfg, build_model=trains)

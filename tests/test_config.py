"""Every config group option composes through Hydra's compose API, and the objects build."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

import minifold  # resolvers; CONFIG_DIR

CONF = minifold.CONFIG_DIR
GROUPS = [
    "generator",
    "data",
    "model",
    "model/head",
    "model/module",
    "model/optimizer",
    "model/scheduler",
    "trainer",
    "folder",
    "logger",
    "callbacks",
    "debug",
    "hparams_search",
]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_config(overrides=(), return_hydra_config=False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def test_every_group_exists_with_options():
    for group in GROUPS + ["paths", "hydra", "experiment"]:
        assert (CONF / group).is_dir(), group
    for group in GROUPS + ["paths", "hydra"]:
        assert options(group), group


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes_and_resolves(group, option, tmp_path):
    cfg = compose_config(
        [f"{group}={option}", f"paths.log_dir={tmp_path}", "hydra.run.dir=."],
        return_hydra_config=True,
    )
    cfg.paths.output_dir = str(tmp_path)  # the hydra resolver is not live outside a run
    OmegaConf.resolve(cfg)
    assert cfg.hydra.runtime.choices[group] == option
    # every literal the option file sets arrived where its package puts it
    path = CONF / group / f"{option}.yaml"
    own = OmegaConf.load(path)
    own.pop("defaults", None)
    header = path.read_text().splitlines()[0]
    package = header.split()[-1] if header.startswith("# @package ") else group.replace("/", ".")
    checked = 0
    for key, value in leaves(own):
        if isinstance(value, str) and ("${" in value or value == "???"):
            continue  # interpolations; placeholders the model file fills in
        got = cfg if package == "_global_" else OmegaConf.select(cfg, package)
        for part in key:  # keys may hold dots (optuna's swept parameters)
            got = got[part]
        got = OmegaConf.to_container(got) if OmegaConf.is_list(got) else got
        assert getattr(got, "name", got) == value, key  # enums (hydra.mode) by name
        checked += 1
    assert checked or not own, f"{path.name} sets nothing literal to check"


def leaves(node, prefix: tuple = ()):
    """(key path, value) of every scalar or list in a config, interpolations unresolved."""
    for key in node:
        value = node._get_node(key)
        name = (*prefix, key)
        if OmegaConf.is_dict(value):
            yield from leaves(value, name)
        elif OmegaConf.is_list(value):
            yield name, OmegaConf.to_container(value)
        else:
            yield name, value._value()


def test_dim_reaches_every_group():
    cfg = compose_config(["dim=3"])
    assert cfg.generator.dim == 3
    assert cfg.folder.dim == 3
    assert cfg.model.dim == 3


def test_data_and_generator_instantiate(tmp_path):
    cfg = compose_config(["generator.back_discount=0.5", f"paths.cache_dir={tmp_path}", "dim=3"])
    datamodule = instantiate(cfg.data)
    assert datamodule.generator.back_discount == 0.5
    assert datamodule.generator.dim == 3
    assert datamodule.cache_dir == tmp_path


def _leaves(node, prefix=""):
    """Every leaf of a plain nested dict as {dotted.key: value}."""
    if not isinstance(node, dict):
        return {prefix: node}
    out = {}
    for key, value in node.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


@pytest.mark.parametrize("name", ["birnn", "transformer", "pair_resnet"])
def test_tuned_models_are_their_base_with_only_searched_settings_changed(name):
    """`model=<name>_tuned` is `model=<name>` but for knobs its tuning search varied."""
    base = compose_config([f"model={name}"])
    tuned = compose_config([f"model={name}_tuned"])
    search = compose_config([f"experiment=tune_{name}"], return_hydra_config=True)
    searched = set(search.hydra.sweeper.params)
    before = _leaves(OmegaConf.to_container(base.model))
    after = _leaves(OmegaConf.to_container(tuned.model))
    assert before.keys() == after.keys()
    changed = {f"model.{k}" for k in before if before[k] != after[k]}
    # how the tuned rate carries to other batch sizes (never linearly: it was tuned near
    # the top of the searched range): no change at the tuning batch
    assert after["lr_scaling"] in ("sqrt", None) and tuned.data.batch_size == 64
    changed.discard("model.lr_scaling")
    assert changed and changed <= searched, changed - searched
    # and the tuning searched this architecture
    assert search.model.net._target_ == tuned.model.net._target_
    module = instantiate(tuned.model)
    out = module(torch.randint(1, 5, (2, 12)), torch.ones(2, 12, dtype=torch.bool))
    assert out["distances"].shape == (2, 12, 12) and torch.isfinite(out["distances"]).all()

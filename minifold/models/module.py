"""The LightningModule that trains a backbone + head to predict all pairwise distances."""

from __future__ import annotations

import inspect
import logging
import math
import random
from collections.abc import Callable, Mapping
from typing import Any, cast

import hydra.utils
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from minifold.geometry import pair_mask as make_pair_mask
from minifold.metrics import distance_mae, lddt_distances
from minifold.models.heads import DistogramHead, Head

log = logging.getLogger(__name__)

# Scheduler arguments that mean "length of training in optimizer steps"; filled in
# from the trainer when the config leaves them out.
TOTAL_STEP_ARGUMENTS = ("total_steps", "T_max", "total_iters")
LR_SCALINGS = ("linear", "sqrt", None)


def _plain(config: Any) -> Any:
    """A DictConfig as plain, resolved Python containers (so checkpoints hold no OmegaConf)."""
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)
    return config


def _collect_rng_states() -> dict[str, Any]:
    """Every random state a training step can draw from (torch CPU and CUDA, NumPy, Python)."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # as plain types and tensors, so the checkpoint loads with weights_only=True
        "numpy": _numpy_state_as_tensor(np.random.get_state(legacy=True)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _numpy_state_as_tensor(
    state: dict[str, Any] | tuple[str, np.ndarray, int, int, float],
) -> tuple[str, Tensor, int, int, float]:
    """NumPy's legacy (MT19937) global state with its key array as a tensor."""
    if isinstance(state, dict):  # only a global generator other than MT19937 gives a dict
        raise TypeError(f"NumPy's global random state is {state.get('bit_generator')}, not MT19937")
    kind, keys, position, has_gauss, cached = state
    return (kind, torch.from_numpy(keys.copy()), int(position), int(has_gauss), float(cached))


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy(), position, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _build(config: Mapping | nn.Module, what: str, **kwargs: Any) -> nn.Module:
    if isinstance(config, nn.Module):
        return config
    if isinstance(config, Mapping) and "_target_" in config:
        return hydra.utils.instantiate(config, **kwargs)
    raise ValueError(f"{what} is {config!r}; give an nn.Module or a config with a _target_")


class DistanceModule(L.LightningModule):
    """Predicts the distance matrix of each sequence's shape.

    `net` (a backbone: tokens -> pair features) and `head` (pair features ->
    distances, plus its loss) are Hydra configs, built here so the checkpoint's
    hyperparameters are enough to rebuild the model:
    `DistanceModule.load_from_checkpoint(path)` needs no other argument. Modules
    may be passed instead (then pass them again when loading). The head config
    gets `pair_dim` from the backbone.

    Args:
        net: backbone config (or module) with `forward(tokens, mask) -> [B, N, N, C]`
            and attribute `pair_dim`.
        head: head config (or module); see `minifold.models.heads`.
        optimizer: partial optimizer config (`_partial_: true`) or a callable taking params.
        scheduler: partial LR scheduler config, callable, or None. `total_steps`,
            `T_max` or `total_iters`, if the scheduler takes one and the config leaves it
            out, is set to the trainer's estimated number of optimizer steps.
        scheduler_interval: "step" or "epoch", how often the scheduler steps.
        alphabet, dim, max_len: what the model was trained on (kept for inference).
        batch_size, lr_reference_batch_size, lr_scaling: the optimizer's `lr` is the
            rate for `lr_reference_batch_size` sequences per batch; at another batch size
            it is multiplied by batch_size / reference ("linear") or its square root
            ("sqrt"), so a GPU preset can raise the batch without retuning. None for
            either: no scaling.
    """

    def __init__(
        self,
        net: Mapping | nn.Module,
        head: Mapping | nn.Module,
        optimizer: Mapping | Callable,
        scheduler: Mapping | Callable | None = None,
        scheduler_interval: str = "step",
        alphabet: str = "abcdefgh",
        dim: int = 2,
        max_len: int = 39,
        batch_size: int = 64,
        lr_reference_batch_size: int | None = 64,
        lr_scaling: str | None = "linear",
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval is {scheduler_interval!r}; use 'step' or 'epoch'")
        if lr_scaling not in LR_SCALINGS:
            raise ValueError(f"model.lr_scaling is {lr_scaling!r}; use one of {LR_SCALINGS}")
        net, head, optimizer, scheduler = (_plain(c) for c in (net, head, optimizer, scheduler))
        self.save_hyperparameters(
            {
                "net": None if isinstance(net, nn.Module) else net,
                "head": None if isinstance(head, nn.Module) else head,
                "optimizer": optimizer if isinstance(optimizer, Mapping) else None,
                "scheduler": scheduler if isinstance(scheduler, Mapping) else None,
                "scheduler_interval": scheduler_interval,
                "alphabet": str(alphabet),
                "dim": int(dim),
                "max_len": int(max_len),
                "batch_size": int(batch_size),
                "lr_reference_batch_size": lr_reference_batch_size,
                "lr_scaling": lr_scaling,
            },
            # the run logs the whole config (model included) to every logger itself
            logger=False,
        )
        self.net = _build(net, "model.net")
        if not hasattr(self.net, "pair_dim"):
            raise ValueError(f"backbone {type(self.net).__name__} has no pair_dim attribute")
        head_kwargs = {}
        if isinstance(head, Mapping) and "pair_dim" not in head:
            head_kwargs["pair_dim"] = self.net.pair_dim
        built = _build(head, "model.head", **head_kwargs)
        for method in ("distances", "loss"):
            if not callable(getattr(built, method, None)):
                raise ValueError(f"head {type(built).__name__} has no {method}() method")
        # an nn.Module with the Head methods (checked above)
        self.head: Head = cast(Head, built)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Squared error and pair count summed over an epoch: the RMSE pools all real
        # pairs rather than averaging per-batch RMSEs.
        self._squared_error: dict[str, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ model
    def forward(self, tokens: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Head outputs for a padded batch.

        Args:
            tokens: [B, N] token ids (PAD = 0)
            mask: [B, N] True on real tokens
        Returns:
            the head's outputs; "distances" [B, N, N] always among them
        """
        return self.head(self.net(tokens, mask))

    def setup(self, stage: str) -> None:
        # Distogram bins span the training data; only when fitting, so that
        # testing or predicting with other data keeps the trained bins.
        if stage != "fit" or not isinstance(self.head, DistogramHead):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        max_distance = getattr(datamodule, "max_distance", None) if datamodule else None
        if max_distance is not None:
            self.head.set_range(float(max_distance))
            log.info("distogram bins span [0, %.3f]", float(self.head.bin_edges[-1]))

    # --------------------------------------------------------------- training
    def _step(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        outputs = self(batch["tokens"], batch["mask"])
        pairs = make_pair_mask(batch["mask"])
        loss = self.head.loss(outputs, batch["distances"], pairs)
        return outputs, pairs, loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        _, _, loss = self._step(batch)
        # Not in the progress bar per step: showing it reads the loss back from the
        # device every step, a host sync that sets the pace on a GPU.
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            batch_size=batch["tokens"].shape[0],
        )
        return loss

    # ------------------------------------------------------- exact resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The random state at the end of an epoch is what the next epoch starts
        # from (dropout, random init of anything lazily built); batch order comes
        # from (seed, epoch) in the datamodule. With both, a resumed run continues
        # exactly as the uninterrupted one would have.
        checkpoint["rng_states"] = _collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states is not None:
            _set_rng_states(states)

    def _evaluate(self, batch: dict[str, Tensor], phase: str) -> Tensor:
        outputs, pairs, loss = self._step(batch)
        mask, true = batch["mask"], batch["distances"]
        predicted = self.head.distances(outputs) * pairs
        size = batch["tokens"].shape[0]
        self.log(f"{phase}/loss", loss, batch_size=size, sync_dist=True, prog_bar=phase == "val")
        self.log(
            f"{phase}/distance_mae",
            distance_mae(predicted, true, mask).mean(),
            batch_size=size,
            sync_dist=True,
            prog_bar=phase == "val",
        )
        self.log(
            f"{phase}/lddt_distances",
            lddt_distances(predicted, true, mask).mean(),
            batch_size=size,
            sync_dist=True,
        )
        total, count = self._squared_error.get(phase, (0.0, 0.0))
        self._squared_error[phase] = (
            total + ((predicted - true) * pairs).square().sum().detach(),
            count + pairs.sum().detach(),
        )
        return loss

    def _log_rmse(self, phase: str) -> None:
        if phase not in self._squared_error:
            return
        total, count = self._squared_error.pop(phase)
        total = self.trainer.strategy.reduce(total.float(), reduce_op="sum")
        count = self.trainer.strategy.reduce(count.float(), reduce_op="sum")
        self.log(f"{phase}/distance_rmse", (total / count.clamp_min(1)).sqrt())

    def on_validation_epoch_start(self) -> None:
        self._squared_error.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._squared_error.pop("test", None)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_rmse("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_rmse("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> dict[str, Tensor]:
        """Predicted distances of a batch, plus the distogram's extras if the head has one.

        Returns:
            distances: [B, N, N] symmetric, zero on the diagonal and at padding
            mask: [B, N]; tokens [B, N]; lengths [B]
            std: [B, N, N] (distogram) standard deviation of each distance
            probabilities: [B, N, N, K] (distogram); bin_centers [K], bin_edges [K + 1]
        """
        tokens, mask = batch["tokens"], batch["mask"]
        outputs = self(tokens, mask)
        pairs = make_pair_mask(mask).to(outputs["distances"].dtype)
        result = {
            "distances": self.head.distances(outputs) * pairs,
            "mask": mask,
            "tokens": tokens,
            "lengths": mask.sum(-1),
        }
        if "index" in batch:
            result["index"] = batch["index"]
        if "std" in outputs:
            result["std"] = outputs["std"] * pairs
        if "probabilities" in outputs and isinstance(self.head, DistogramHead):
            full = make_pair_mask(mask, include_diagonal=True)
            result["probabilities"] = outputs["probabilities"] * full[..., None]
            result["bin_centers"] = self.head.bin_centers
            result["bin_edges"] = self.head.bin_edges
        return result

    @torch.no_grad()
    def predict(self, tokens: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """`predict_step` for raw tokens [B, N] outside a Trainer (eval mode, no grad)."""
        was_training = self.training
        self.eval()
        try:
            mask = tokens != 0 if mask is None else mask.bool()
            return self.predict_step(
                {"tokens": tokens.to(self.device), "mask": mask.to(self.device)}
            )
        finally:
            self.train(was_training)

    # -------------------------------------------------------------- optimiser
    def _factory(self, config: Mapping | Callable) -> Callable:
        if isinstance(config, Mapping):
            return hydra.utils.instantiate(config, _partial_=True)
        return config

    def configure_optimizers(self) -> Any:
        optimizer = self._factory(self.optimizer_factory)(self.parameters())
        reference = self.hparams.get("lr_reference_batch_size")
        scaling = self.hparams.get("lr_scaling")
        if reference and scaling:
            scale = self.hparams["batch_size"] / reference
            scale = math.sqrt(scale) if scaling == "sqrt" else scale
            for group in optimizer.param_groups:
                group["lr"] *= scale
        if self.scheduler_factory is None:
            return optimizer
        factory = self._factory(self.scheduler_factory)
        given = dict(getattr(factory, "keywords", {}) or {})
        target = getattr(factory, "func", factory)
        parameters: Mapping[str, inspect.Parameter]
        try:
            parameters = inspect.signature(target).parameters
        except (TypeError, ValueError):
            parameters = {}
        extra = {}
        for name in TOTAL_STEP_ARGUMENTS:
            if name in parameters and name not in given:
                total: float | None = self.trainer.estimated_stepping_batches
                if self.hparams["scheduler_interval"] == "epoch":
                    total = self.trainer.max_epochs
                if total is None or not math.isfinite(total) or total < 1:
                    raise ValueError(
                        f"scheduler {getattr(target, '__name__', target)} needs {name}, but the "
                        f"trainer's length is {total}; set trainer.max_steps or max_epochs, "
                        f"or give model.scheduler.{name}"
                    )
                extra[name] = int(total)
        scheduler = factory(optimizer, **extra)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.hparams["scheduler_interval"],
            },
        }

    # ------------------------------------------------------------- notebooks
    @torch.no_grad()
    def predict_sequences(self, sequences: list[str]) -> dict[str, Tensor]:
        """Predicted distances of sequences given as letters (the notebook entry point).

        Args:
            sequences: B strings over the model's alphabet, each at most max_len long
        Returns:
            `predict` of the padded batch: distances [B, N, N], mask [B, N], lengths [B],
            and for a distogram head std [B, N, N], probabilities [B, N, N, K],
            bin_centers [K], bin_edges [K + 1]
        """
        from minifold.data.alphabet import Alphabet

        if isinstance(sequences, str):
            sequences = [sequences]
        alphabet = Alphabet(self.hparams["alphabet"], max_len=int(self.hparams["max_len"]))
        tokens, mask = alphabet.encode_batch(list(sequences))
        return self.predict(tokens, mask)

"""A callback that stops training after a given epoch, as a kill between epochs would."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback


class StopAfterEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, module) -> None:
        if trainer.current_epoch >= self.epoch:
            trainer.should_stop = True

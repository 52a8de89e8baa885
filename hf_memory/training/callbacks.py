"""Epoch-wise schedules of memory training, each a pure function of `state.epoch`.

Being pure functions of the epoch, they need no saved state: on `resume_from_checkpoint` the restored
`state.epoch` (e.g. 1.33 -> epoch 1) puts every schedule back where it was.
"""

import math

from transformers import TrainerCallback


def epoch_index(state) -> int:
    return int(math.floor((state.epoch or 0.0) + 1e-9))


class ProgressiveSegmentsCallback(TrainerCallback):
    """Cap the segments per training document at `schedule[epoch]` (the last value for later epochs).

    Sets the cap on the collator (which cuts documents) and on the trainer's sampler (which groups documents by
    their capped length). Needs `dataloader_persistent_workers=False`: persistent workers keep a stale collator.
    """

    def __init__(self, trainer, schedule: list[int]):
        if trainer.args.dataloader_persistent_workers:
            raise ValueError(
                "progressive_segments changes the collator between epochs, which persistent dataloader workers never "
                "see. Fix: set --dataloader_persistent_workers False."
            )
        self.trainer = trainer
        self.schedule = schedule

    def segments_for(self, state) -> int:
        return self.schedule[min(epoch_index(state), len(self.schedule) - 1)]

    def _apply(self, state):
        cap = self.segments_for(state)
        self.trainer.data_collator.max_segments = cap
        if self.trainer.segment_sampler is not None:
            self.trainer.segment_sampler.max_segments = cap

    def on_train_begin(self, args, state, control, **kwargs):
        self._apply(state)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._apply(state)


class SamplerEpochCallback(TrainerCallback):
    """Give the segment sampler the epoch at every epoch start.

    On a mid-epoch resume accelerate's `skip_first_batches` wrapper hides the sampler from `set_epoch`, and the
    resumed epoch would be shuffled differently from the interrupted one.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer.segment_sampler is not None:
            self.trainer.segment_sampler.set_epoch(epoch_index(state))


class FreezeBaseWarmupCallback(TrainerCallback):
    """Freeze the pretrained base (`model.base_model`, embeddings included) for the first `epochs` epochs.

    The memory modules and the QA head keep training, so a new memory adapts before it can disturb the base.
    """

    def __init__(self, model, epochs: int):
        memory = getattr(model, "memory", None)
        memory_ids = {id(p) for p in memory.parameters()} if memory is not None else set()
        self.base_parameters = [p for p in model.base_model.parameters() if id(p) not in memory_ids]
        self.epochs = epochs

    def on_epoch_begin(self, args, state, control, **kwargs):
        trainable = epoch_index(state) >= self.epochs
        for parameter in self.base_parameters:
            parameter.requires_grad_(trainable)


class GlobalSoftmaxWarmupCallback(TrainerCallback):
    """Train with the per-segment loss for the first `epochs` epochs, then with the global softmax."""

    def __init__(self, trainer, epochs: int):
        self.trainer = trainer
        self.epochs = epochs

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.global_softmax_active = self.trainer.use_global_softmax and epoch_index(state) >= self.epochs

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.global_softmax_active = self.trainer.use_global_softmax

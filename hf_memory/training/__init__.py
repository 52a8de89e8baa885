"""Training of memory models: MemoryTrainer, epoch-wise schedules, argument dataclasses."""

from .arguments import MemoryArguments, skip_pin_memory_on_cpu
from .callbacks import (
    FreezeBaseWarmupCallback,
    GlobalSoftmaxWarmupCallback,
    ProgressiveSegmentsCallback,
    SamplerEpochCallback,
)
from .trainer import MemoryTrainer, global_softmax_loss, per_segment_loss

__all__ = [
    "FreezeBaseWarmupCallback",
    "GlobalSoftmaxWarmupCallback",
    "MemoryArguments",
    "MemoryTrainer",
    "ProgressiveSegmentsCallback",
    "SamplerEpochCallback",
    "global_softmax_loss",
    "per_segment_loss",
    "skip_pin_memory_on_cpu",
]

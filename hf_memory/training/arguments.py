"""Command-line arguments of memory training, parsed by `HfArgumentParser` next to `TrainingArguments`."""

import logging
import os
from dataclasses import dataclass, field

import torch
from transformers.trainer_utils import get_last_checkpoint

from ..models.memxlnet.configuration_memxlnet import READING_ORDERS

logger = logging.getLogger(__name__)

MODEL_TYPES = ("memxlnet", "gmmxlnet", "xlnet")
GMM_OPTIONS = (
    "num_memory_experts",
    "routing_temperature",
    "routing_mode",
    "pooling_method",
    "expert_init_strategies",
    "load_balance_weight",
    "entropy_regularization_weight",
)


@dataclass
class MemoryArguments:
    model_type: str = field(
        default="memxlnet",
        metadata={"help": "memxlnet, gmmxlnet, or xlnet (the same code path with memory_num_tokens=0, the baseline)."},
    )
    memory_num_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Memory token pairs per segment. Default: the checkpoint's value, or 8 when training from "
            "scratch. Given with a no-memory checkpoint, memory is added to it (model.enable_memory)."
        },
    )
    memory_update: str | None = field(
        default=None, metadata={"help": "gated, gated_replace or none (default: the config's)."}
    )
    memory_init: str | None = field(default=None, metadata={"help": "learned or zeros (default: the config's)."})
    memory_impl: str | None = field(default=None, metadata={"help": "token or differentiable (default: the config's)."})
    reading_order: str | None = field(
        default=None,
        metadata={
            "help": "forward, backward or bidirectional: the order in which the segments of a document are read, the "
            "memory carried from each to the next (default: the checkpoint's, else forward). Backward lets a segment "
            "know what the document says after it; bidirectional reads both ways with two memories, trains each pass on "
            "its own and sums their span logits."
        },
    )
    max_n_segs: int | None = field(
        default=None, metadata={"help": "Keep at most this many segments per document (the rest is dropped, counted)."}
    )
    progressive_segments: str | None = field(
        default=None,
        metadata={"help": "Segment caps per training epoch, e.g. '2,4,6' (the last value holds for later epochs)."},
    )
    bptt_depth: int = field(
        default=0, metadata={"help": "Segments per truncated-BPTT window; 0 backpropagates through the whole document."}
    )
    use_global_softmax: bool = field(
        default=False, metadata={"help": "One softmax over all segments of a document instead of a loss per segment."}
    )
    warmup_freeze_base_epochs: int = field(
        default=0, metadata={"help": "Epochs during which the XLNet base is frozen (memory and QA head train)."}
    )
    warmup_disable_global_softmax_epochs: int = field(
        default=0, metadata={"help": "Epochs of per-segment loss before the global softmax takes over."}
    )
    num_memory_experts: int | None = field(
        default=None, metadata={"help": "gmmxlnet: number of expert memories, 2 to 8 (default: the config's, 4)."}
    )
    routing_temperature: float | None = field(default=None, metadata={"help": "gmmxlnet: router softmax temperature."})
    routing_mode: str | None = field(default=None, metadata={"help": "gmmxlnet: write-based or read-based."})
    pooling_method: str | None = field(default=None, metadata={"help": "gmmxlnet: mean, max or attention."})
    expert_init_strategies: list[str] | None = field(
        default=None, metadata={"help": "gmmxlnet: one of orthogonal/learned/zeros per expert."}
    )
    load_balance_weight: float | None = field(default=None, metadata={"help": "gmmxlnet: load-balance loss weight."})
    entropy_regularization_weight: float | None = field(
        default=None, metadata={"help": "gmmxlnet: routing entropy regulariser weight."}
    )

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"Unknown model_type={self.model_type!r}. Fix: use one of {', '.join(MODEL_TYPES)}.")
        given = [name for name in GMM_OPTIONS if getattr(self, name) is not None]
        if given and self.model_type != "gmmxlnet":
            raise ValueError(f"--{given[0]} only applies to GMM memory. Fix: add --model_type gmmxlnet.")
        if self.reading_order not in (None, *READING_ORDERS):
            raise ValueError(
                f"Unknown reading_order={self.reading_order!r}. Fix: use one of {', '.join(READING_ORDERS)}."
            )
        if self.model_type == "xlnet" and self.memory_num_tokens:
            raise ValueError("model_type='xlnet' is the no-memory baseline. Fix: drop --memory_num_tokens or use memxlnet.")
        for name in ("max_n_segs", "bptt_depth", "warmup_freeze_base_epochs", "warmup_disable_global_softmax_epochs"):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "max_n_segs" else 0):
                raise ValueError(f"{name} must be {'>= 1' if name == 'max_n_segs' else '>= 0'}, got {value}.")
        self.progressive_schedule = parse_schedule(self.progressive_segments)

    @property
    def null_score_reduction(self) -> str:
        """Where the postprocessing reads the null score: the loss's null target."""
        return "last" if self.use_global_softmax else "min"


def parse_schedule(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        schedule = [int(part) for part in str(text).replace(" ", "").split(",") if part]
    except ValueError:
        raise ValueError(f"progressive_segments={text!r} is not a comma-separated list of integers, e.g. '2,4,6'.") from None
    if not schedule or min(schedule) < 1:
        raise ValueError(f"progressive_segments={text!r} must list segment counts >= 1.")
    return schedule


def skip_pin_memory_on_cpu(training_args) -> None:
    """Pinned host memory only speeds up copies to a CUDA device; on a CPU-only run the Trainer's default
    `dataloader_pin_memory=True` makes every DataLoader warn that no accelerator was found."""
    if training_args.dataloader_pin_memory and (training_args.use_cpu or not torch.cuda.is_available()):
        training_args.dataloader_pin_memory = False


def checkpoint_in_output_dir(training_args, overwrite_output_dir: bool) -> str | None:
    """The official examples' rule for `--do_train` into an existing `output_dir`: continue from its last
    `checkpoint-*`, refuse a non-empty folder without one, and start afresh with `--overwrite_output_dir` (a flag
    transformers 5 dropped from `TrainingArguments`, so the scripts declare it themselves)."""
    output_dir = training_args.output_dir
    if not training_args.do_train or overwrite_output_dir or training_args.resume_from_checkpoint:
        return None
    if not os.path.isdir(output_dir):
        return None
    last_checkpoint = get_last_checkpoint(output_dir)
    if last_checkpoint is None and os.listdir(output_dir):
        raise ValueError(
            f"Output directory ({output_dir}) already exists, is not empty and holds no checkpoint-* to resume from. "
            "Fix: pass --overwrite_output_dir to train into it anyway, or choose another --output_dir."
        )
    if last_checkpoint is not None:
        logger.info("Resuming from %s (found in output_dir; --overwrite_output_dir starts afresh).", last_checkpoint)
    return last_checkpoint


def missing_local_model_path(path: str | None) -> bool:
    """Whether a `--model_name_or_path`-style value names a local folder that does not exist: a path (`./x`, `/x`,
    `a/b/c`), not a Hub id (`name`, `user/name`), which the Hub library would reject as a malformed repo id."""
    return bool(path) and not os.path.isdir(path) and (path.count("/") > 1 or path.startswith((".", "/", "~")))


def check_model_paths(model_args) -> None:
    """Refuses, before any work, a model/config/tokenizer flag of the scripts' `ModelArguments` that points at a local
    folder that does not exist."""
    for flag in ("model_name_or_path", "config_name", "tokenizer_name"):
        path = getattr(model_args, flag)
        if missing_local_model_path(path):
            raise ValueError(
                f"--{flag} {path} is not a folder (nor a Hub id). Fix: pass an existing checkpoint folder or a Hub "
                "repository id like 'user/model'."
            )

"""MemXLNet configuration: XLNet plus memory tokens carried across the segments of a long document."""

import copy
from typing import TYPE_CHECKING

from huggingface_hub.dataclasses import strict
from transformers import XLNetConfig

if TYPE_CHECKING:
    # Never imported at run time. `save_pretrained` copies the single-dot relative imports of the model files next to
    # the weights, so this line ships the QA pipeline (and its qa_processing helpers) with every checkpoint.
    from .pipeline_question_answering import MemXLNetQuestionAnsweringPipeline  # noqa: F401

MEMORY_INITS = ("learned", "zeros")
MEMORY_UPDATES = ("gated", "gated_replace", "none")
MEMORY_IMPLS = ("token", "differentiable")
NULL_SCORE_REDUCTIONS = ("min", "last")
READING_ORDERS = ("forward", "backward", "bidirectional")
# `pipeline("question-answering", model=<checkpoint>, trust_remote_code=True)` resolves the task through this entry.
QUESTION_ANSWERING_PIPELINE = {
    "impl": "pipeline_question_answering.MemXLNetQuestionAnsweringPipeline",
    "pt": ["AutoModelForQuestionAnswering"],
}


@strict
class MemXLNetConfig(XLNetConfig):
    r"""
    Configuration of [`MemXLNetForQuestionAnswering`]. All [`XLNetConfig`] fields apply; the memory fields are:

    Args:
        memory_num_tokens (`int`, *optional*, defaults to 0):
            Number m of `[MEM_READ_i]` / `[MEM_WRITE_i]` token pairs placed in every segment. 0 gives the no-memory
            XLNet baseline.
        memory_init (`str`, *optional*, defaults to `"learned"`):
            Initial memory of a document: `"learned"` (a trained parameter) or `"zeros"`.
        memory_update (`str`, *optional*, defaults to `"gated"`):
            Token memory update: `"gated"` (g = sigmoid(W_g[M;N]), u = tanh(W_u[M;N]), M' = g*u + (1-g)*M),
            `"gated_replace"` (g = sigmoid(W_g[M;N]), M' = g*N + (1-g)*M: the gate chooses between keeping the memory
            and taking the write-token states N unchanged; it starts close to replacing, g ~ 0.88) or `"none"`
            (M' = N, the write-token states replace the memory). On documents longer than those trained on,
            `"gated"` saturates (its tanh candidate): at twice the training length `"gated_replace"` kept 87-89.5%
            exact match on BABILong-style qa1 (3 seeds) where `"gated"` kept 85% (README).
        memory_impl (`str`, *optional*, defaults to `"token"`):
            `"token"`: the memory is the m write-token states. `"differentiable"`: a content-addressed memory matrix
            of `memory_slots` rows with multi-head writes, usage-based allocation and temporal links; the m read
            tokens receive its m read vectors.
        memory_slots (`int`, *optional*, defaults to 16):
            Rows of the differentiable memory matrix.
        memory_num_heads (`int`, *optional*, defaults to 4):
            Write heads of the differentiable memory.
        memory_use_usage_tracking (`bool`, *optional*, defaults to `True`):
            Differentiable memory: allocate writes to the least-used rows (DNC allocation weighting).
        memory_use_temporal_links (`bool`, *optional*, defaults to `True`):
            Differentiable memory: track write order and let read heads follow it forwards and backwards.
        mem_read_token_ids (`list[int]`, *optional*):
            Vocabulary ids of `[MEM_READ_0..m-1]`. Defaults to the m ids after the base vocabulary.
        mem_write_token_ids (`list[int]`, *optional*):
            Vocabulary ids of `[MEM_WRITE_0..m-1]`. Defaults to the m ids after the read ids.
        null_score_reduction (`str`, *optional*, defaults to `"min"`):
            Which segment's `<cls>` score is a document's no-answer score at inference: `"min"` over segments (as
            the official run_qa, for per-segment training) or `"last"` (the last segment, which has read the whole
            document; set by run_qa.py for global-softmax training). Used by run_qa.py and the QA pipeline.
        reading_order (`str`, *optional*, defaults to `"forward"`):
            Order in which the segments of a document are read, the memory carried from each to the next:
            `"forward"` (first to last), `"backward"` (last to first) or `"bidirectional"` (both: a second memory of
            the same kind reads the document backward, then the first reads it forward; each pass is trained as a
            reader of its own, and a segment's span logits are the sum of its two readings). Reading backward, a
            segment sees through memory what the document says after it, so a passage can tell that it has been
            superseded; reading forward, a later passage can tell that it supersedes an earlier one. On
            BABILong-style qa1 the two make opposite errors, and bidirectional reading generalises furthest
            (README). The trainer, run_qa.py and the QA pipeline read documents in this order; the `"last"` segment
            of `null_score_reduction` is the one read last (the first segment when reading backward, else the last).

    When the token ids are not given, `vocab_size` is grown by 2m so that the memory tokens appended by
    `hf_memory.add_memory_tokens` to a tokenizer of the base vocabulary line up with the embedding matrix.

    Example:

    ```python
    >>> from hf_memory import MemXLNetConfig, MemXLNetForQuestionAnswering
    >>> config = MemXLNetConfig(vocab_size=1000, d_model=64, n_layer=2, n_head=4, d_inner=128, memory_num_tokens=4)
    >>> model = MemXLNetForQuestionAnswering(config)
    ```"""

    model_type = "memxlnet"
    # `Trainer.predict` / `evaluate` keep the span logits only, as for XLNet's QA heads
    keys_to_ignore_at_inference = ["mems", "memory_state"]
    # checkpoints this config is meant to start from (memory is added to a trained model)
    upgradable_model_types = ("xlnet",)

    memory_num_tokens: int = 0
    memory_init: str = "learned"
    memory_update: str = "gated"
    memory_impl: str = "token"
    memory_slots: int = 16
    memory_num_heads: int = 4
    memory_use_usage_tracking: bool = True
    memory_use_temporal_links: bool = True
    mem_read_token_ids: list[int] | None = None
    mem_write_token_ids: list[int] | None = None
    null_score_reduction: str = "min"
    reading_order: str = "forward"

    def __post_init__(self, **kwargs):
        self._validate_memory_fields()
        m = self.memory_num_tokens
        if m and self.mem_read_token_ids is None and self.mem_write_token_ids is None:
            self.mem_read_token_ids = list(range(self.vocab_size, self.vocab_size + m))
            self.mem_write_token_ids = list(range(self.vocab_size + m, self.vocab_size + 2 * m))
            self.vocab_size += 2 * m
        self._validate_memory_token_ids()
        super().__post_init__(**kwargs)
        # A fresh copy per config: transformers' `clean_custom_task` rewrites these entries in place.
        self.custom_pipelines = {
            "question-answering": copy.deepcopy(QUESTION_ANSWERING_PIPELINE),
            **(getattr(self, "custom_pipelines", None) or {}),
        }

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        """A checkpoint of `upgradable_model_types` is read as this type: no "model of type `xlnet` to instantiate a
        model of type `memxlnet`" warning, and `config.model_type` names what the model now is."""
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") in cls.upgradable_model_types:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    def _validate_memory_fields(self):
        if self.memory_num_tokens < 0:
            raise ValueError(
                f"memory_num_tokens must be >= 0 (0 = no memory), got {self.memory_num_tokens}. "
                "Fix: pass memory_num_tokens=0 for the XLNet baseline or a positive number of memory slots."
            )
        for field, value, allowed in (
            ("memory_init", self.memory_init, MEMORY_INITS),
            ("memory_update", self.memory_update, MEMORY_UPDATES),
            ("memory_impl", self.memory_impl, MEMORY_IMPLS),
            ("null_score_reduction", self.null_score_reduction, NULL_SCORE_REDUCTIONS),
            ("reading_order", self.reading_order, READING_ORDERS),
        ):
            if value not in allowed:
                raise ValueError(f"Unknown {field}={value!r}. Fix: use one of {', '.join(map(repr, allowed))}.")
        if self.reading_order == "bidirectional" and not self.memory_num_tokens:
            raise ValueError(
                "reading_order='bidirectional' reads with two memories, but memory_num_tokens=0 gives none. Fix: set "
                "memory_num_tokens > 0, or reading_order='forward'."
            )
        if self.memory_slots < 1 or self.memory_num_heads < 1:
            raise ValueError(
                f"memory_slots ({self.memory_slots}) and memory_num_heads ({self.memory_num_heads}) must be >= 1."
            )

    def _validate_memory_token_ids(self):
        m = self.memory_num_tokens
        for field in ("mem_read_token_ids", "mem_write_token_ids"):
            ids = getattr(self, field)
            if m == 0:
                if ids:
                    raise ValueError(f"{field} is set but memory_num_tokens=0. Fix: set memory_num_tokens={len(ids)}.")
                setattr(self, field, None)
                continue
            if ids is None or len(ids) != m:
                raise ValueError(
                    f"{field} must list memory_num_tokens={m} ids, got {ids}. Fix: take them from "
                    "hf_memory.add_memory_tokens(tokenizer, memory_num_tokens) or leave both id lists unset."
                )
            if min(ids) < 0 or max(ids) >= self.vocab_size:
                raise ValueError(f"{field}={ids} fall outside vocab_size={self.vocab_size}. Fix: resize the vocabulary.")
        if m and set(self.mem_read_token_ids) & set(self.mem_write_token_ids):
            raise ValueError("mem_read_token_ids and mem_write_token_ids overlap. Fix: use distinct token ids.")


ROUTING_MODES = ("write-based", "read-based")
POOLING_METHODS = ("mean", "max", "attention")
EXPERT_INIT_STRATEGIES = ("orthogonal", "learned", "zeros")
MIN_MEMORY_EXPERTS, MAX_MEMORY_EXPERTS = 2, 8


@strict
class GMMXLNetConfig(MemXLNetConfig):
    r"""
    Configuration of [`GMMXLNetForQuestionAnswering`]: MemXLNet whose memory is a gated mixture of k expert memories.
    All [`MemXLNetConfig`] fields apply except `memory_impl`, `memory_update` and `memory_init` (the experts have
    their own gated update and initialisation); the GMM fields are:

    Args:
        num_memory_experts (`int`, *optional*, defaults to 4):
            Number k of expert memories, each of `memory_num_tokens` slots (2 to 8).
        routing_temperature (`float`, *optional*, defaults to 1.0):
            Softmax temperature of the router; below 1 sharpens routing, above 1 softens it.
        routing_mode (`str`, *optional*, defaults to `"write-based"`):
            Weights of the aggregated read that fills the `[MEM_READ_i]` tokens of the next segment:
            `"write-based"` reuses the write routing of the previous segment, `"read-based"` routes with a second
            router on the `[MEM_READ_i]` hidden states of the previous segment.
        pooling_method (`str`, *optional*, defaults to `"mean"`):
            How the router pools the slot states: `"mean"`, `"max"` or `"attention"` (learned attention pooling).
        expert_init_strategies (`list[str]`, *optional*):
            Initial memory of each expert: `"orthogonal"` (mutually orthogonal slots), `"learned"` (small normal
            noise) or `"zeros"`. All initial memories are trained. Defaults to `["learned"] * num_memory_experts`.
        load_balance_weight (`float`, *optional*, defaults to 0.01):
            Weight of the Switch-style load-balance loss added to the QA loss (prevents expert collapse).
        entropy_regularization_weight (`float`, *optional*, defaults to 0.0):
            Weight of the entropy regulariser log(k) - H(routing) added to the QA loss (keeps routing soft).

    Example:

    ```python
    >>> from hf_memory import GMMXLNetConfig, GMMXLNetForQuestionAnswering
    >>> config = GMMXLNetConfig(vocab_size=1000, d_model=64, n_layer=2, n_head=4, d_inner=128, memory_num_tokens=4)
    >>> model = GMMXLNetForQuestionAnswering(config)
    ```"""

    model_type = "gmmxlnet"
    upgradable_model_types = ("xlnet", "memxlnet")
    keys_to_ignore_at_inference = MemXLNetConfig.keys_to_ignore_at_inference + [
        "routing_probs", "read_routing_probs", "load_balance_loss", "entropy_loss", "aux_loss",
    ]

    memory_num_tokens: int = 16
    num_memory_experts: int = 4
    routing_temperature: float | int = 1.0
    routing_mode: str = "write-based"
    pooling_method: str = "mean"
    expert_init_strategies: list[str] | None = None
    load_balance_weight: float | int = 0.01
    entropy_regularization_weight: float | int = 0.0

    def __post_init__(self, **kwargs):
        if self.expert_init_strategies is None:
            self.expert_init_strategies = ["learned"] * self.num_memory_experts
        self._validate_gmm_fields()
        super().__post_init__(**kwargs)

    def _validate_gmm_fields(self):
        k = self.num_memory_experts
        if isinstance(k, bool) or not isinstance(k, int) or not MIN_MEMORY_EXPERTS <= k <= MAX_MEMORY_EXPERTS:
            raise ValueError(
                f"num_memory_experts must be an integer in [{MIN_MEMORY_EXPERTS}, {MAX_MEMORY_EXPERTS}], got {k!r}."
            )
        if not self.routing_temperature > 0:
            raise ValueError(f"routing_temperature must be > 0, got {self.routing_temperature}.")
        for field, value, allowed in (
            ("routing_mode", self.routing_mode, ROUTING_MODES),
            ("pooling_method", self.pooling_method, POOLING_METHODS),
        ):
            if value not in allowed:
                raise ValueError(f"{field} must be one of {', '.join(map(repr, allowed))}, got {value!r}.")
        for field in ("load_balance_weight", "entropy_regularization_weight"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}.")
        if self.memory_num_tokens <= 0:
            raise ValueError(
                f"memory_num_tokens must be > 0 for GMM memory (each expert needs memory slots), got "
                f"{self.memory_num_tokens}. Fix: use memory_num_tokens=16, or MemXLNetConfig for the no-memory baseline."
            )
        if self.memory_impl != "token":
            raise ValueError(
                f"GMM memory is a standalone memory architecture; memory_impl={self.memory_impl!r} cannot be combined "
                "with it. Fix: leave memory_impl='token' (the default)."
            )
        strategies = self.expert_init_strategies
        if len(strategies) != k:
            raise ValueError(
                f"expert_init_strategies must have num_memory_experts={k} entries, got {len(strategies)}: {strategies}."
            )
        unknown = [strategy for strategy in strategies if strategy not in EXPERT_INIT_STRATEGIES]
        if unknown:
            raise ValueError(
                f"Unknown expert_init_strategies {unknown}. Fix: use {', '.join(map(repr, EXPERT_INIT_STRATEGIES))}."
            )


def gmm_small_config(**kwargs) -> GMMXLNetConfig:
    """k=2 experts: prototyping and small memory budgets. Keyword arguments override any field."""
    return GMMXLNetConfig(**{"num_memory_experts": 2, **kwargs})


def gmm_balanced_config(**kwargs) -> GMMXLNetConfig:
    """k=4 experts: the recommended default. Keyword arguments override any field."""
    return GMMXLNetConfig(**{"num_memory_experts": 4, **kwargs})


def gmm_large_config(**kwargs) -> GMMXLNetConfig:
    """k=8 experts: maximum capacity. Keyword arguments override any field."""
    return GMMXLNetConfig(**{"num_memory_experts": 8, **kwargs})


__all__ = ["GMMXLNetConfig", "MemXLNetConfig", "gmm_balanced_config", "gmm_large_config", "gmm_small_config"]

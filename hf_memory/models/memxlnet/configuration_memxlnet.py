"""MemXLNet configuration: XLNet plus memory tokens carried across the segments of a long document."""

from huggingface_hub.dataclasses import strict
from transformers import XLNetConfig

MEMORY_INITS = ("learned", "zeros")
MEMORY_UPDATES = ("gated", "none")
MEMORY_IMPLS = ("token", "differentiable")


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
            Token memory update: `"gated"` (g = sigmoid(W_g[M;N]), u = tanh(W_u[M;N]), M' = g*u + (1-g)*M) or
            `"none"` (M' = N, the write-token states replace the memory).
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

    When the token ids are not given, `vocab_size` is grown by 2m so that the memory tokens appended by
    `hf_memory.add_memory_tokens` to a tokenizer of the base vocabulary line up with the embedding matrix.

    Example:

    ```python
    >>> from hf_memory import MemXLNetConfig, MemXLNetForQuestionAnswering
    >>> config = MemXLNetConfig(vocab_size=1000, d_model=64, n_layer=2, n_head=4, d_inner=128, memory_num_tokens=4)
    >>> model = MemXLNetForQuestionAnswering(config)
    ```"""

    model_type = "memxlnet"

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

    def __post_init__(self, **kwargs):
        self._validate_memory_fields()
        m = self.memory_num_tokens
        if m and self.mem_read_token_ids is None and self.mem_write_token_ids is None:
            self.mem_read_token_ids = list(range(self.vocab_size, self.vocab_size + m))
            self.mem_write_token_ids = list(range(self.vocab_size + m, self.vocab_size + 2 * m))
            self.vocab_size += 2 * m
        self._validate_memory_token_ids()
        super().__post_init__(**kwargs)

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
        ):
            if value not in allowed:
                raise ValueError(f"Unknown {field}={value!r}. Fix: use one of {', '.join(map(repr, allowed))}.")
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


__all__ = ["MemXLNetConfig"]

"""MemoryTransformer: a Llama-style causal LM whose layers read learnable memory banks through cross-attention.

Remote code: this file is copied next to checkpoints by `save_pretrained`; it imports only `transformers`, `torch` and
its sibling `configuration_memory_transformer`.

Reusable memory API (also used by the memory adapters for pretrained Llama/Qwen2/Mistral models): every module below
takes a `MemoryTransformerConfig`, which only needs the host's `hidden_size`, `num_attention_heads`,
`num_key_value_heads`, `rms_norm_eps`, `initializer_range` and the memory fields.

- `build_memory_bank(config)` -> a `MemoryTransformerMemoryBank` (standard | factorized | reduced_dim); calling it
  returns the `(num_memory_tokens, config.memory_dim)` memory vectors.
- `MemoryTransformerChapterRouter(config)`: causal chunk routing over the routed chapters.
- `MemoryTransformerMemoryBlock(config, layer_idx)`: pre-norm memory cross-attention sublayer;
  `delta, router_logits = block(hidden_states, memory_bank, attention_mask=None, memory_cache=None)` and the caller
  adds `delta` to the residual stream. Its output projection is zero-initialised, so it is an exact no-op at init.
- `MemoryCache`: what a memory layer keeps between forward calls of one generation: projected memory keys/values (one
  projection per layer per cache, reused by every decoding step) and the causal routing state. Keep one next to the
  KV cache (`MemoryTransformerCache` is a `DynamicCache` that carries one).
- `memory_router_statistics(router_logits, top_k, attention_mask)` -> load-balance loss, z-loss and chapter usage.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import (
    GenericForSequenceClassification,
    GenericForTokenClassification,
    GradientCheckpointingLayer,
)
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import PreTrainedModel, slice_logits_to_keep
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import capture_outputs

from .configuration_memory_transformer import MemoryTransformerConfig

try:  # model cards need hf_memory; checkpoints loaded as remote code work without it
    from hf_memory.model_cards import ModelCardMixin
except ImportError:

    class ModelCardMixin:
        """Without hf_memory, checkpoints are saved without a model card."""


class MemoryTransformerRMSNorm(LlamaRMSNorm):
    pass


class MemoryTransformerFusedRMSNorm(MemoryTransformerRMSNorm):
    """The memory sublayer's pre-norm through PyTorch's fused `rms_norm` (fewer kernels and autograd nodes per call;
    same parameters and state-dict keys). Mixed dtypes take Llama's upcasting path."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dtype != self.weight.dtype:
            return super().forward(hidden_states)
        return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)


class MemoryTransformerRotaryEmbedding(nn.Module):
    """Default RoPE with `config.rope_theta` (Llama's rotate-half layout)."""

    def __init__(self, config: MemoryTransformerConfig):
        super().__init__()
        self.config = config
        self.rope_type = "default"
        inv_freq, self.attention_scaling = self.compute_default_rope_parameters(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: MemoryTransformerConfig, **kwargs) -> tuple[torch.Tensor, float]:
        dim = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Memory banks


class MemoryTransformerMemoryBank(nn.Module):
    """Learnable memory vectors. Calling the bank returns them as a `(num_memory_tokens, config.memory_dim)` tensor."""

    def __init__(self, config: MemoryTransformerConfig):
        super().__init__()
        self.num_memory_tokens = config.num_memory_tokens
        self.memory_dim = config.memory_dim
        self.init_std = config.memory_init_std

    def reset_parameters(self) -> None:
        raise NotImplementedError


class MemoryTransformerStandardMemoryBank(MemoryTransformerMemoryBank):
    """A full `(num_memory_tokens, hidden_size)` matrix."""

    def __init__(self, config: MemoryTransformerConfig):
        super().__init__(config)
        self.memory = nn.Parameter(torch.empty(self.num_memory_tokens, self.memory_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.normal_(self.memory, mean=0.0, std=self.init_std)

    def forward(self) -> torch.Tensor:
        return self.memory


class MemoryTransformerFactorizedMemoryBank(MemoryTransformerMemoryBank):
    """`M = A B^T` with rank `memory_rank`: `(N + d) r` parameters instead of `N d`.

    `B` is initialised with std `1/sqrt(r)` so the product has elementwise std `memory_init_std`.
    """

    def __init__(self, config: MemoryTransformerConfig):
        super().__init__(config)
        self.rank = config.memory_rank
        self.coefficients = nn.Parameter(torch.empty(self.num_memory_tokens, self.rank))
        self.basis = nn.Parameter(torch.empty(self.memory_dim, self.rank))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.normal_(self.coefficients, mean=0.0, std=self.init_std)
        init.normal_(self.basis, mean=0.0, std=self.rank**-0.5)

    def forward(self) -> torch.Tensor:
        return self.coefficients @ self.basis.T


class MemoryTransformerReducedDimMemoryBank(MemoryTransformerStandardMemoryBank):
    """Vectors of width `memory_rank`; the memory attention then runs in that width (`config.memory_dim`)."""


MEMORY_BANK_CLASSES = {
    "standard": MemoryTransformerStandardMemoryBank,
    "factorized": MemoryTransformerFactorizedMemoryBank,
    "reduced_dim": MemoryTransformerReducedDimMemoryBank,
}


def build_memory_bank(config: MemoryTransformerConfig) -> MemoryTransformerMemoryBank:
    """The bank selected by `config.memory_bank_type`."""
    return MEMORY_BANK_CLASSES[config.memory_bank_type](config)


# ----------------------------------------------------------------------------------------------------------------------
# Memory state kept across forward calls (generation)


@dataclass
class MemoryRoutingState:
    """Causal routing summary of every token a memory layer has processed so far.

    query_sum / query_count: sum and number of the routing queries of non-padding tokens, `(batch, 1, d)` /
    `(batch, 1, 1)`, up to the pending tokens.
    chunk_logits: router logits of each row's current chunk, `(batch, 1, num_routed_chapters)`.
    num_positions: the number of non-padding tokens each row has processed (pending ones included), which fixes where
    its next chunk starts: a left-padded row is routed exactly like the same row without padding.
    chunk_memory: the keys, values `(batch, kv_heads, S, head_dim)` and chapter-weight bias `(batch, 1, 1, S)` gathered
    for those chunks (see `MemoryTransformerMemoryBlock._gather_chapters`), so decoding steps inside a chunk reuse them
    instead of gathering again; `None` until a step needs them.
    pending: routing queries of the calls since the last routing decision (padding-free), not yet in the sums: they
    only matter for the next decision, so decoding steps inside a chunk just append here and the next decision sums
    them in its prefix matmul (no tensor ops per step).
    """

    query_sum: torch.Tensor
    query_count: torch.Tensor
    chunk_logits: torch.Tensor
    num_positions: tuple[int, ...]
    chunk_memory: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    pending: tuple[torch.Tensor, ...] = ()

    def advanced(self, routing_queries: torch.Tensor, keep_chunk_memory: bool) -> "MemoryRoutingState":
        """The state after padding-free tokens that stay inside every row's current chunk (routing unchanged)."""
        return MemoryRoutingState(
            self.query_sum, self.query_count, self.chunk_logits,
            tuple(done + routing_queries.shape[1] for done in self.num_positions),
            self.chunk_memory if keep_chunk_memory else None, self.pending + (routing_queries,),
        )

    def index_batch(self, indices: torch.Tensor) -> "MemoryRoutingState":
        def select(tensor):
            return None if tensor is None else tensor.index_select(0, indices)

        return MemoryRoutingState(
            select(self.query_sum),
            select(self.query_count),
            select(self.chunk_logits),
            tuple(self.num_positions[index] for index in indices.tolist()),
            None if self.chunk_memory is None else tuple(select(tensor) for tensor in self.chunk_memory),
            tuple(select(queries) for queries in self.pending),
        )


@dataclass(frozen=True)
class MemoryChunkLayout:
    """Where the new tokens of one call sit among the routing chunks of their rows.

    segment / slot: `(batch, seq_len)`: the token's chunk, counted from the chunk of the row's first new token, and its
    place among that chunk's new tokens (`segment = -1` for padding). `None` when the tokens are already in chunk order
    in every row (no padding, equally long rows, chunk-aligned or within one chunk), which needs no packing.
    continues_chunk: every row's first segment is a chunk routed by an earlier call (its gathered memory is reusable).
    """

    segment: torch.Tensor | None
    slot: torch.Tensor | None
    continues_chunk: bool


IN_CHUNK_ORDER = MemoryChunkLayout(None, None, continues_chunk=False)
CONTINUING_CHUNK = MemoryChunkLayout(None, None, continues_chunk=True)


class MemoryCache:
    """Memory-side state of one generation, kept next to the KV cache.

    key_values[layer_idx]: the layer's projected memory keys and values, `(kv_heads, chapters, tokens_per_chapter,
    head_dim)` each. They depend only on parameters, so they are projected once, on the first forward that uses this
    cache, and reused by every later decoding step (parameters do not change during a generation).
    routing_states[layer_idx]: a `MemoryRoutingState` (batch-dependent; follows beam reordering).
    """

    def __init__(self):
        self.key_values: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.routing_states: dict[int, MemoryRoutingState] = {}

    def index_batch(self, indices: torch.Tensor) -> None:
        """Keep (and reorder) the batch rows `indices`, as beam search and batch selection do with the KV cache."""
        self.routing_states = {
            layer: state.index_batch(indices.to(state.query_sum.device)) for layer, state in self.routing_states.items()
        }

    def reset(self) -> None:
        self.key_values.clear()
        self.routing_states.clear()


class MemoryTransformerCache(DynamicCache):
    """A `DynamicCache` that also carries the `MemoryCache` of the memory layers (`.memory_cache`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.memory_cache = MemoryCache()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.memory_cache.index_batch(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.memory_cache.index_batch(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.memory_cache.routing_states:
            batch_size = next(iter(self.memory_cache.routing_states.values())).query_sum.shape[0]
            self.memory_cache.index_batch(torch.arange(batch_size).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        if self.memory_cache.routing_states:
            raise ValueError(
                "MemoryTransformerCache cannot be cropped: the causal routing state of the memory layers cannot be "
                "rolled back. Fix: do not use assisted/speculative decoding with routed memory (use_chapters=True)."
            )
        super().crop(tokens_to_remove)

    def reset(self) -> None:
        super().reset()
        self.memory_cache.reset()


# ----------------------------------------------------------------------------------------------------------------------
# Chapter routing


def padding_mask(attention_mask: torch.Tensor | None, seq_len: int) -> torch.Tensor | None:
    """The `(batch, seq_len)` mask of the new tokens for the chapter routers, or `None` when none is padding (their
    padding-free path), checked once per forward rather than in every memory layer."""
    if attention_mask is None or attention_mask.dim() != 2:
        return None
    token_mask = attention_mask[:, -seq_len:]
    return None if bool(token_mask.all()) else token_mask


def memory_router_statistics(
    router_logits: tuple[torch.Tensor, ...], top_k: int, attention_mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Router losses and usage over all memory layers, counting every non-padding token once per layer.

    router_logits: one `(batch, seq_len, num_routed_chapters)` tensor per memory layer (the logits each token's chunk was
    routed with). Returns `load_balance_loss` (Switch-style `C/k * sum_i f_i P_i`: 1.0 for perfectly balanced routing,
    up to `C/k` when collapsed; differentiable through `P`), `z_loss` (mean squared logsumexp) and `chapter_fraction`
    (`(layers, C)`, the share of routing choices per chapter, summing to 1 per layer).
    """
    logits = torch.stack([layer_logits.float() for layer_logits in router_logits])
    num_chapters = logits.shape[-1]
    if attention_mask is None:
        token_weight = torch.ones(logits.shape[1:3], device=logits.device)
    else:
        token_weight = attention_mask[:, -logits.shape[2] :].to(device=logits.device, dtype=torch.float32)
    token_weight = (token_weight / token_weight.sum().clamp(min=1.0))[None, :, :, None]
    probs = logits.softmax(-1)
    selected = torch.zeros_like(probs).scatter_(-1, logits.topk(top_k, dim=-1).indices, 1.0)
    chapter_fraction = (selected * token_weight).sum((1, 2)) / top_k
    mean_probs = (probs * token_weight).sum((1, 2))
    load_balance = num_chapters * (chapter_fraction * mean_probs).sum(-1).mean()
    z_loss = (logits.logsumexp(-1, keepdim=True).square() * token_weight).sum((1, 2, 3)).mean()
    return {"load_balance_loss": load_balance, "z_loss": z_loss, "chapter_fraction": chapter_fraction}


class MemoryTransformerChapterRouter(nn.Module):
    """Chooses chapters per routing chunk from a causal mean of routing queries.

    Chunk `j` of a row covers its non-padding tokens `[j c, (j + 1) c)` (counted without padding) with
    `c = config.routing_chunk_size`. Its logits are `gate(mean of the routing queries of the row's non-padding tokens
    up to and including token j c)`, so no token is routed with information from a later position or from padding,
    the amount of left padding does not move chunk boundaries, and a cached, token-by-token decode computes the same
    routing as a full forward.
    """

    def __init__(self, config: MemoryTransformerConfig):
        super().__init__()
        self.chunk_size = config.routing_chunk_size
        self.top_k = config.top_k_chapters
        self.num_shared_chapters = config.num_shared_chapters
        self.gate = nn.Linear(config.hidden_size, config.num_routed_chapters, bias=False)

    def forward(
        self,
        routing_queries: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        state: MemoryRoutingState | None = None,
    ) -> tuple[torch.Tensor, MemoryRoutingState, MemoryChunkLayout]:
        """Router logits of every chunk the new tokens touch, `(batch, num_segments, num_routed_chapters)` (segment 0
        is the chunk of each row's first new token), the state after these tokens, and the tokens' layout.

        routing_queries: `(batch, seq_len, hidden)` for the new tokens; token_mask: `(batch, seq_len)`, 1 = real token
        (`None`: no padding); state: the state after the previous tokens of these sequences (`None` = they are the
        first tokens). Only the prefix sums at chunk starts (and the total, for the state) are formed, as one batched
        matmul with 0/1 prefix matrices: cheaper than a cumulative sum over every position, and exact. Padding-free
        calls that start no chunk in any row only keep their queries in `state.pending` until the next call that does.
        """
        batch_size, seq_len, _ = routing_queries.shape
        device = routing_queries.device
        chunk = self.chunk_size
        seen = (0,) * batch_size if state is None else state.num_positions
        if token_mask is None and self.stays_in_chunk(state, seq_len):
            return state.chunk_logits, state.advanced(routing_queries, keep_chunk_memory=False), CONTINUING_CHUNK
        pending = state.pending if state is not None else ()
        num_pending = sum(queries.shape[1] for queries in pending)
        queries = torch.cat([*pending, routing_queries], 1) if pending else routing_queries
        if token_mask is None:
            real = torch.ones(batch_size, num_pending + seq_len, dtype=torch.bool, device=device)
            new_real = [seq_len] * batch_size
        else:
            real = torch.cat([torch.ones(batch_size, num_pending, dtype=torch.bool, device=device), token_mask > 0], 1)
            new_real = real[:, num_pending:].sum(1).tolist()
        first_chunk = [done // chunk for done in seen]
        last_segment = [(done + count - 1) // chunk - first if count else 0
                        for done, count, first in zip(seen, new_real, first_chunk)]
        num_segments = max(last_segment) + 1
        seen_ids = torch.tensor(seen, device=device)
        summed = seen_ids - num_pending  # real tokens already in state.query_sum
        index = summed[:, None] + real.cumsum(1) - 1  # each token's place among its row's real tokens
        first_chunk_ids = torch.tensor(first_chunk, device=device)
        chunk_starts = (first_chunk_ids[:, None] + torch.arange(num_segments, device=device)) * chunk
        prefix = torch.cat([real[:, None] & (index[:, None] <= chunk_starts[:, :, None]), real[:, None]], 1).float()
        sums = torch.matmul(prefix, queries.float())
        counts = prefix.sum(-1, keepdim=True)
        if state is not None:
            sums = sums + state.query_sum
            counts = counts + state.query_count
        means = sums[:, :-1] / counts[:, :-1].clamp(min=1.0)
        chunk_logits = self.gate(means.to(self.gate.weight.dtype))
        continued = [bool(done % chunk) for done in seen]
        if any(continued):  # those rows' first segment was routed when its chunk started
            keep = torch.tensor(continued, device=device)[:, None, None]
            first = torch.where(keep, state.chunk_logits.to(chunk_logits.dtype), chunk_logits[:, :1])
            chunk_logits = torch.cat([first, chunk_logits[:, 1:]], 1)
        last_logits = chunk_logits.gather(
            1, torch.tensor(last_segment, device=device)[:, None, None].expand(-1, 1, chunk_logits.shape[-1])
        )
        new_state = MemoryRoutingState(
            sums[:, -1:], counts[:, -1:], last_logits, tuple(done + count for done, count in zip(seen, new_real))
        )
        # Training (aligned chunks) and decoding (one segment) need no packing: the tokens are already in chunk order.
        aligned = len(set(seen)) == 1 and seen[0] % chunk == 0 and seq_len % chunk == 0
        if token_mask is None and (num_segments == 1 or aligned):
            return chunk_logits, new_state, IN_CHUNK_ORDER
        new_index = index[:, num_pending:]
        segment = new_index.div(chunk, rounding_mode="floor") - first_chunk_ids[:, None]
        segment_start = torch.maximum((first_chunk_ids[:, None] + segment) * chunk, seen_ids[:, None])
        slot = new_index - segment_start
        segment = segment.masked_fill(~real[:, num_pending:], -1)
        return chunk_logits, new_state, MemoryChunkLayout(segment, slot, continues_chunk=False)

    def stays_in_chunk(self, state: MemoryRoutingState | None, seq_len: int) -> bool:
        """Whether `seq_len` more padding-free tokens keep every row inside the chunk it is in (routing unchanged)."""
        return state is not None and all(0 < done % self.chunk_size <= self.chunk_size - seq_len
                                         for done in state.num_positions)

    def select(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Chapter ids `(..., S + k)` (shared chapters first) and their mixing weights (shared 1, routed top-k
        probabilities renormalised to sum to 1, as in Mixtral)."""
        top_logits, top_ids = logits.float().topk(self.top_k, dim=-1)
        weights = top_logits.softmax(-1)
        ids = top_ids + self.num_shared_chapters
        if self.num_shared_chapters:
            shared_ids = torch.arange(self.num_shared_chapters, device=ids.device).expand(*ids.shape[:-1], -1)
            ids = torch.cat([shared_ids, ids], dim=-1)
            weights = torch.cat([torch.ones_like(shared_ids, dtype=weights.dtype), weights], dim=-1)
        return ids, weights


# ----------------------------------------------------------------------------------------------------------------------
# Memory cross-attention block


class MemoryTransformerZeroInitLinear(nn.Linear):
    """Memory output projection: zero-initialised when `config.zero_init_memory_output` (block is a no-op at init)."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool, std: float):
        self.zero_init = zero_init
        self.init_std = std
        super().__init__(in_features, out_features, bias=False)

    def reset_parameters(self) -> None:
        if self.zero_init:
            init.zeros_(self.weight)
        else:
            init.normal_(self.weight, mean=0.0, std=self.init_std)


class MemoryAttentionFunction(torch.autograd.Function):
    """`softmax(query keys^T * scaling + bias) values` for `(batch, M, d)` queries, `(batch, S, d)` keys/values and a
    `(batch, 1, S)` bias (or `None`), with dropout on the probabilities, as batched matmuls with a hand-written
    backward. Autograd would keep the scores, the probabilities and two `(batch, M, S)` gradients alive; here the
    probabilities overwrite the scores and the score gradient overwrites the probability gradient, the softmax
    backward's row sums are `grad_out . out` (`M x d`) instead of `grad_probs . probs` (`M x S`), and the key gradient
    comes out untransposed."""

    @staticmethod
    def forward(ctx, query, keys, values, bias, scaling: float, dropout: float):
        if bias is None:
            scores = torch.bmm(query, keys.mT).mul_(scaling)
        else:
            scores = torch.baddbmm(bias, query, keys.mT, alpha=scaling)
        probs = torch.softmax(scores, -1, out=scores)
        keep = None
        if dropout > 0:
            keep = torch.empty_like(probs).bernoulli_(1 - dropout).div_(1 - dropout)
        out = torch.bmm(probs if keep is None else probs * keep, values)
        ctx.save_for_backward(query, keys, values, probs, out, keep)
        ctx.scaling, ctx.bias_shape = scaling, None if bias is None else bias.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        query, keys, values, probs, out, keep = ctx.saved_tensors
        grad_query = grad_keys = grad_values = grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_values = torch.bmm((probs if keep is None else probs * keep).mT, grad_out)
        grad_scores = torch.bmm(grad_out, values.mT)
        if keep is not None:
            grad_scores.mul_(keep)
        grad_scores.sub_((grad_out * out).sum(-1, keepdim=True)).mul_(probs)
        if ctx.needs_input_grad[0]:
            grad_query = torch.bmm(grad_scores, keys).mul_(ctx.scaling)
        if ctx.needs_input_grad[1]:
            grad_keys = torch.bmm(grad_scores.mT, query).mul_(ctx.scaling)
        if ctx.needs_input_grad[3]:
            grad_bias = grad_scores.sum(1, keepdim=True).sum_to_size(ctx.bias_shape)
        return grad_query, grad_keys, grad_values, grad_bias, None, None


class MemoryTransformerMemoryBlock(nn.Module):
    """Pre-norm cross-attention from the token stream to a memory bank; returns a residual update.

    Queries: `memory_query(RMSNorm(hidden_states))`. Keys/values: `memory_key` / `memory_value` of the (RMS-normalised)
    memory vectors, projected once per forward, or once per `MemoryCache` (without autograd: once for as long as the
    parameters are unchanged). Without chapters every token attends to the whole bank. With chapters, each routing
    chunk attends to its shared chapters (weight 1) and its top-k routed chapters (renormalised router probabilities)
    in one softmax where each chapter's logits get a `log(weight)` bias, so the router is trained by the language-model
    loss. Only the selected chapters' keys/values are gathered, once per chunk (decoding steps inside a chunk reuse
    them). Keys/values are never repeated per query head: without autograd SDPA attends grouped-query style; with
    autograd the query heads that share a key/value head are stacked into one batched matmul.

    The sub-module names (`memory_query`, `memory_key`, `memory_value`, `memory_output`) deliberately differ from the
    usual LoRA targets (`q_proj`, `v_proj`, ...).
    """

    def __init__(self, config: MemoryTransformerConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.memory_num_attention_heads
        self.num_key_value_heads = config.memory_num_key_value_heads
        self.head_dim = config.memory_head_dim
        self.num_chapters = config.num_chapters if config.use_chapters else 1
        self.memory_rms_norm = config.memory_rms_norm
        self.norm_eps = config.rms_norm_eps
        self.dropout = config.memory_dropout
        self.memory_layernorm = MemoryTransformerFusedRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.memory_query = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.memory_key = nn.Linear(config.memory_dim, self.num_key_value_heads * self.head_dim, bias=False)
        self.memory_value = nn.Linear(config.memory_dim, self.num_key_value_heads * self.head_dim, bias=False)
        self.memory_output = MemoryTransformerZeroInitLinear(
            self.num_heads * self.head_dim, config.hidden_size, config.zero_init_memory_output, config.initializer_range
        )
        self.router = MemoryTransformerChapterRouter(config) if config.use_chapters else None
        self._inference_key_values = None
        for projection in (self.memory_query, self.memory_key, self.memory_value):
            init.normal_(projection.weight, mean=0.0, std=config.initializer_range)
        if self.router is not None:
            init.normal_(self.router.gate.weight, mean=0.0, std=config.initializer_range)

    def project_memory(self, memory_bank: MemoryTransformerMemoryBank) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the whole bank, `(kv_heads, chapters, tokens_per_chapter, head_dim)` each: gathering
        chapters along dim 1 directly gives the `(kv_heads, groups, tokens, head_dim)` batches of the attention."""
        memory = memory_bank()
        if self.memory_rms_norm:
            memory = memory * torch.rsqrt(memory.float().pow(2).mean(-1, keepdim=True) + self.norm_eps).to(memory.dtype)
        shape = (self.num_chapters, -1, self.num_key_value_heads, self.head_dim)
        keys = self.memory_key(memory).view(shape).permute(2, 0, 1, 3).contiguous()
        values = self.memory_value(memory).view(shape).permute(2, 0, 1, 3).contiguous()
        return keys, values

    def _inference_projection(self, memory_bank: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """`project_memory` without autograd, reused across forward calls and generations for as long as the bank and
        the key/value weights are the same tensor objects, unmodified (in-place updates such as optimizer steps or
        `load_state_dict` bump a tensor's version counter; `.to(dtype/device)` swaps `.data`, which changes its data
        pointer). The cache holds those tensors, so none can be freed and replaced by a look-alike while in use."""
        tensors = [*memory_bank.parameters(), *memory_bank.buffers(), self.memory_key.weight, self.memory_value.weight]
        versions = [(tensor._version, tensor.data_ptr()) for tensor in tensors]
        cached = self._inference_key_values
        if (
            cached is None
            or len(cached[0]) != len(tensors)
            or any(old is not new for old, new in zip(cached[0], tensors))
            or cached[1] != versions
        ):
            cached = self._inference_key_values = (tensors, versions, self.project_memory(memory_bank))
        return cached[2]

    def forward(
        self,
        hidden_states: torch.Tensor,
        memory_bank: MemoryTransformerMemoryBank,
        attention_mask: torch.Tensor | None = None,
        memory_cache: MemoryCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns `(delta, router_logits)`.

        hidden_states: `(batch, seq_len, hidden)`, the new tokens only. attention_mask: `(batch, seq_len)` padding mask
        of these tokens (1 = real); padding never influences routing. memory_cache: state shared with earlier calls of
        the same generation (`None` = the tokens start their sequences and nothing is kept). delta: `(batch, seq_len,
        hidden)` to add to the residual stream. router_logits: `(batch, seq_len, num_routed_chapters)` or `None`
        without chapters.
        """
        if (
            self.router is not None and memory_cache is not None and attention_mask is None
            and hidden_states.shape[1] == 1 and not torch.is_grad_enabled()
        ):
            state = memory_cache.routing_states.get(self.layer_idx)
            if state is not None and state.chunk_memory is not None and self.router.stays_in_chunk(state, 1):
                return self._decode_within_chunk(hidden_states, state, memory_cache)
        if memory_cache is not None and self.layer_idx in memory_cache.key_values:
            keys, values = memory_cache.key_values[self.layer_idx]
        else:
            project = self.project_memory if torch.is_grad_enabled() else self._inference_projection
            keys, values = project(memory_bank)
            if memory_cache is not None:
                memory_cache.key_values[self.layer_idx] = (keys, values)
        seq_len = hidden_states.shape[1]
        normed = self.memory_layernorm(hidden_states)
        query = self.memory_query(normed)
        if self.router is None:  # one bank for every token
            attended = self._attend(query, keys.transpose(0, 1), values.transpose(0, 1), None, 1)
            return self.memory_output(attended), None
        state = memory_cache.routing_states.get(self.layer_idx) if memory_cache is not None else None
        chunk_logits, new_state, layout = self.router(normed, attention_mask, state)
        attended, new_state.chunk_memory = self._attend_chapters(
            query, keys, values, chunk_logits, layout, state,
            keep_chunk_memory=memory_cache is not None and not torch.is_grad_enabled(),
        )
        if memory_cache is not None:
            memory_cache.routing_states[self.layer_idx] = new_state
        if layout.segment is not None:
            token_segment = layout.segment.clamp(min=0)[..., None].expand(-1, -1, chunk_logits.shape[-1])
            router_logits = chunk_logits.gather(1, token_segment)
        elif chunk_logits.shape[1] == 1:
            router_logits = chunk_logits.expand(-1, seq_len, -1)
        else:  # chunk-aligned rows: token t is in segment t // chunk_size
            router_logits = chunk_logits.repeat_interleave(self.router.chunk_size, dim=1)
        return self.memory_output(attended), router_logits

    def _decode_within_chunk(
        self, hidden_states: torch.Tensor, state: MemoryRoutingState, memory_cache: MemoryCache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding step (one token per row) inside every row's routed chunk, whose chapters are already gathered:
        the general path's result without its routing and packing bookkeeping, which at batch 1 took about an eighth
        of the block's time."""
        normed = self.memory_layernorm(hidden_states)
        attended = self._attend(self.memory_query(normed), *state.chunk_memory, 1)
        memory_cache.routing_states[self.layer_idx] = state.advanced(normed, keep_chunk_memory=True)
        return self.memory_output(attended), state.chunk_logits

    def _group_queries(self, query: torch.Tensor, num_groups_per_row: int) -> torch.Tensor:
        """`(batch, groups * group_len, heads * head_dim)` -> `(kv_heads, batch * groups, heads_per_kv * group_len,
        head_dim)`: the query heads that share a key/value head are stacked, so grouped-query attention needs no
        repeated keys/values."""
        batch_size, length, _ = query.shape
        group_len = length // num_groups_per_row
        heads_per_kv = self.num_heads // self.num_key_value_heads
        grouped = query.view(batch_size, num_groups_per_row, group_len, self.num_key_value_heads, heads_per_kv, -1)
        return grouped.permute(3, 0, 1, 4, 2, 5).reshape(
            self.num_key_value_heads, batch_size * num_groups_per_row, heads_per_kv * group_len, self.head_dim
        )

    def _ungroup(self, attended: torch.Tensor, batch_size: int, num_groups_per_row: int) -> torch.Tensor:
        """Inverse of `_group_queries`: back to `(batch, groups * group_len, heads * head_dim)`."""
        heads_per_kv = self.num_heads // self.num_key_value_heads
        attended = attended.view(
            self.num_key_value_heads, batch_size, num_groups_per_row, heads_per_kv, -1, self.head_dim
        )
        return attended.permute(1, 2, 4, 0, 3, 5).reshape(batch_size, -1, self.num_heads * self.head_dim)

    def _attend(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None,
        num_groups_per_row: int,
    ) -> torch.Tensor:
        """`softmax(query keys^T / sqrt(head_dim) + bias) values` per group of consecutive query slots.

        query `(batch, groups * group_len, heads * head_dim)`; keys/values `(batch * groups, kv_heads, S, head_dim)`, or
        `(1, kv_heads, S, head_dim)` for one bank shared by every group; bias `(batch * groups, 1, 1, S)`. Returns the
        attended values in the query's layout. Without autograd this is one fused SDPA call on strided views of the
        query and output (no copies, no materialised scores). With autograd it is `MemoryAttentionFunction` on the
        query heads stacked per kv head: on CPU, SDPA falls back to its slow math path whenever the bias needs a
        gradient (it trains the router), and its fused backward is slower than these batched matmuls.
        """
        batch_size, length, _ = query.shape
        if not torch.is_grad_enabled() and not (self.training and self.dropout > 0):
            num_groups = batch_size * num_groups_per_row
            if keys.shape[0] != num_groups:  # one bank for every group
                keys, values = keys.expand(num_groups, -1, -1, -1), values.expand(num_groups, -1, -1, -1)
            if length == num_groups_per_row:  # one token per group (decoding): its heads per kv head are the rows
                heads = query.view(num_groups, self.num_key_value_heads, -1, self.head_dim)
                return F.scaled_dot_product_attention(heads, keys, values, attn_mask=bias).reshape(query.shape)
            heads = query.view(num_groups, -1, self.num_heads, self.head_dim).transpose(1, 2)
            attended = F.scaled_dot_product_attention(heads, keys, values, attn_mask=bias, enable_gqa=True)
            return attended.transpose(1, 2).reshape(query.shape)
        grouped = self._group_queries(query, num_groups_per_row)
        if keys.shape[0] == 1:  # one bank for every group: fold the groups into the query rows of each kv head
            grouped = grouped.reshape(self.num_key_value_heads, 1, -1, self.head_dim)
        keys, values = keys.transpose(0, 1).flatten(0, 1), values.transpose(0, 1).flatten(0, 1)
        if bias is not None:
            bias = bias.transpose(0, 1).expand(self.num_key_value_heads, -1, -1, -1).flatten(0, 1)
        attended = MemoryAttentionFunction.apply(
            grouped.flatten(0, 1), keys, values, bias, self.head_dim**-0.5, self.dropout if self.training else 0.0
        )
        return self._ungroup(attended, batch_size, num_groups_per_row)

    def _attend_chapters(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        chunk_logits: torch.Tensor,
        layout: MemoryChunkLayout,
        state: MemoryRoutingState | None,
        keep_chunk_memory: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
        """Group the new tokens by routing chunk, gather each chunk's chapters and attend to them jointly.

        Memory attention ignores token positions, so the tokens of one chunk are packed into a group of
        `min(chunk_size, seq_len)` query slots that share the gathered keys/values (padding takes no slot and reads
        nothing). The chapter weights enter as a `log(weight)` bias on that chapter's logits (one softmax over all
        selected tokens, each chapter's attention mass scaled by its weight), which is how the router receives
        gradient from the language-model loss. Returns the attended values `(batch, seq_len, heads * head_dim)` and
        (with `keep_chunk_memory`, for a call within one chunk per row) the chunks' gathered memory, which later
        decoding steps inside those chunks reuse from `state.chunk_memory` (routing is fixed in a chunk). After a
        call spanning several chunks, the next step gathers its chunk's memory itself: keeping it would cost a copy per
        forward that plain forwards never use.
        """
        batch_size, seq_len, width = query.shape
        num_segments = chunk_logits.shape[1]
        group_len = min(self.router.chunk_size, seq_len)
        if layout.segment is not None:
            num_slots = batch_size * num_segments * group_len
            row_start = torch.arange(batch_size, device=query.device)[:, None] * (num_segments * group_len)
            flat_slot = torch.where(layout.segment >= 0, row_start + layout.segment * group_len + layout.slot, num_slots)
            flat_slot = flat_slot.flatten()[:, None].expand(-1, width)
            packed = query.new_zeros(num_slots + 1, width).scatter(0, flat_slot, query.reshape(-1, width))
            query = packed[:-1].view(batch_size, num_segments * group_len, width)
        memory = state.chunk_memory if layout.continues_chunk else None
        if memory is None:
            memory = self._gather_chapters(keys, values, chunk_logits, query.dtype)
        attended = self._attend(query, *memory, num_segments)
        if layout.segment is not None:
            attended = torch.cat([attended.reshape(-1, width), attended.new_zeros(1, width)])
            attended = attended.gather(0, flat_slot).view(batch_size, seq_len, width)
        return attended, memory if keep_chunk_memory and num_segments == 1 else None

    def _gather_chapters(
        self, keys: torch.Tensor, values: torch.Tensor, chunk_logits: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys and values `(groups, kv_heads, S, head_dim)` (views of `(kv_heads, groups, ...)` tensors) and the
        `log(weight)` bias `(groups, 1, 1, S)` of the selected chapters of every chunk, `S = (shared + top_k) *
        tokens_per_chapter`."""
        chapter_ids, weights = self.router.select(chunk_logits)
        num_groups = chapter_ids.shape[0] * chapter_ids.shape[1]
        num_kv_heads, tokens_per_chapter = keys.shape[0], keys.shape[2]
        flat_ids = chapter_ids.flatten()
        selected_keys = keys.index_select(1, flat_ids).view(num_kv_heads, num_groups, -1, self.head_dim)
        selected_values = values.index_select(1, flat_ids).view(num_kv_heads, num_groups, -1, self.head_dim)
        log_weights = weights.clamp(min=torch.finfo(weights.dtype).tiny).log().to(dtype)
        bias = log_weights.view(num_groups, 1, 1, -1, 1).expand(-1, -1, -1, -1, tokens_per_chapter)
        return selected_keys.transpose(0, 1), selected_values.transpose(0, 1), bias.reshape(num_groups, 1, 1, -1)


# ----------------------------------------------------------------------------------------------------------------------
# Backbone


class MemoryTransformerDecoderLayer(GradientCheckpointingLayer):
    """Llama decoder layer plus, on memory layers, a memory sublayer (variant A: SA -> memory -> MLP; variant B:
    SA -> MLP -> memory -> MLP)."""

    def __init__(self, config: MemoryTransformerConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LlamaAttention(config=config, layer_idx=layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = MemoryTransformerRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = MemoryTransformerRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.variant = config.memory_block_variant
        has_memory = layer_idx in config.get_memory_layer_indices()
        self.memory_block = MemoryTransformerMemoryBlock(config, layer_idx) if has_memory else None
        self.memory_bank_index = config.get_memory_bank_index(layer_idx) if has_memory else None
        if has_memory and self.variant == "B":
            self.post_memory_layernorm = MemoryTransformerRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.post_memory_mlp = LlamaMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        memory_bank: MemoryTransformerMemoryBank | None = None,
        attention_mask: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        memory_cache = getattr(cache, "memory_cache", None)
        router_logits = None
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        if self.memory_block is not None and self.variant == "A":
            delta, router_logits = self.memory_block(hidden_states, memory_bank, token_mask, memory_cache)
            hidden_states = hidden_states + delta
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        if self.memory_block is not None and self.variant == "B":
            delta, router_logits = self.memory_block(hidden_states, memory_bank, token_mask, memory_cache)
            hidden_states = hidden_states + delta
            hidden_states = hidden_states + self.post_memory_mlp(self.post_memory_layernorm(hidden_states))
        return hidden_states, router_logits


class MemoryTransformerPreTrainedModel(ModelCardMixin, PreTrainedModel):
    config: MemoryTransformerConfig
    config_class = MemoryTransformerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MemoryTransformerDecoderLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"attentions": LlamaAttention}

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (MemoryTransformerZeroInitLinear, MemoryTransformerMemoryBank)):
            module.reset_parameters()
        else:
            super()._init_weights(module)


class MemoryTransformerModel(MemoryTransformerPreTrainedModel):
    """Embeddings, decoder layers and final norm; owns the memory banks shared between memory layers."""

    def __init__(self, config: MemoryTransformerConfig):
        super().__init__(config)
        config.validate_architecture()
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [MemoryTransformerDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.memory_banks = nn.ModuleList([build_memory_bank(config) for _ in range(config.num_memory_banks)])
        self.norm = MemoryTransformerRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = MemoryTransformerRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs,
    ) -> MoeModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds.")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = MemoryTransformerCache(config=self.config)
        # chapter routing keeps a per-row state that must follow the cache (beam reordering); a memory without
        # chapters reads the same projected bank at every step, so any Cache (static, quantized, ...) works
        routes_chapters = self.config.use_chapters and len(self.memory_banks) > 0
        if routes_chapters and cache is not None and not isinstance(cache, MemoryTransformerCache):
            raise ValueError(
                f"cache is a {type(cache).__name__}, but memory layers with chapters must keep their routing "
                "state next to the KV cache. Fix: pass MemoryTransformerCache(config=config) or let the model "
                "create one (use_cache=True, and no cache_implementation in generate())."
            )
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        # only chapter routing reads padding
        token_mask = padding_mask(attention_mask, inputs_embeds.shape[1]) if routes_chapters else None
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        all_hidden_states = () if output_hidden_states else None
        all_router_logits = ()
        for decoder_layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            memory_bank = None
            if decoder_layer.memory_bank_index is not None:
                memory_bank = self.memory_banks[decoder_layer.memory_bank_index]
            hidden_states, router_logits = decoder_layer(
                hidden_states,
                memory_bank=memory_bank,
                attention_mask=causal_mask,
                token_mask=token_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            if router_logits is not None:
                all_router_logits += (router_logits,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return MoeModelOutputWithPast(
            last_hidden_state=hidden_states,
            cache=cache if use_cache else None,
            hidden_states=all_hidden_states,
            router_logits=all_router_logits if output_router_logits and all_router_logits else None,
        )


class MemoryTransformerForCausalLM(MemoryTransformerPreTrainedModel, GenerationMixin):
    """MemoryTransformer with a language-modelling head. With chapters and `output_router_logits`, the weighted router
    losses (`aux_loss`) are added to the loss in training mode, so `eval_loss` stays the pure cross-entropy."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MemoryTransformerConfig):
        super().__init__(config)
        self.model = MemoryTransformerModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        auto_map = dict(getattr(config, "auto_map", None) or {})
        auto_map.setdefault("AutoModel", "modeling_memory_transformer.MemoryTransformerModel")
        config.auto_map = auto_map
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits,
            return_dict=True,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        aux_loss = None
        if outputs.router_logits is not None:
            stats = memory_router_statistics(outputs.router_logits, self.config.top_k_chapters, attention_mask)
            aux_loss = (
                self.config.router_aux_loss_coef * stats["load_balance_loss"]
                + self.config.router_z_loss_coef * stats["z_loss"]
            )
            if loss is not None and self.training:
                loss = loss + aux_loss.to(loss.device)
        return MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits,
        )

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, **kwargs):
        """Decoding steps skip the router statistics (nobody reads them) unless `output_router_logits` is passed."""
        model_inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        model_inputs.setdefault("output_router_logits", False)
        return model_inputs

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """Let `generate()` use a `MemoryTransformerCache` where it would create a plain `DynamicCache`."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get("cache")
        if type(cache) is DynamicCache and not getattr(cache, "_is_user_defined", False):
            model_kwargs["cache"] = MemoryTransformerCache(config=self.config.get_text_config(decoder=True))


class MemoryTransformerForSequenceClassification(GenericForSequenceClassification, MemoryTransformerPreTrainedModel):
    """Llama's sequence-classification head (scores of each row's last non-padding token) on a MemoryTransformer.
    The backbone is built directly rather than through `AutoModel`, so a remote-code checkpoint loads in a process
    that never registered the model type. As in Mixtral's classification head, router losses are not added."""

    card_pipeline_tag = "text-classification"

    def __init__(self, config: MemoryTransformerConfig):
        MemoryTransformerPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = MemoryTransformerModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()


class MemoryTransformerForTokenClassification(GenericForTokenClassification, MemoryTransformerPreTrainedModel):
    """Llama's token-classification head (a label per token, from that token and the ones before it) on a
    MemoryTransformer; like the sequence classifier, it builds its backbone directly (remote code) and adds no router
    losses. Dropout before the head: `config.classifier_dropout`, 0.1 when unset, as in Llama's."""

    card_pipeline_tag = "token-classification"

    def __init__(self, config: MemoryTransformerConfig):
        MemoryTransformerPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = MemoryTransformerModel(config)
        classifier_dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(0.1 if classifier_dropout is None else classifier_dropout)
        self.score = nn.Linear(config.hidden_size, self.num_labels)
        self.post_init()


MemoryTransformerConfig.register_for_auto_class()
MemoryTransformerModel.register_for_auto_class("AutoModel")
MemoryTransformerForCausalLM.register_for_auto_class("AutoModelForCausalLM")
MemoryTransformerForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
MemoryTransformerForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")

__all__ = [
    "MemoryCache",
    "MemoryRoutingState",
    "MemoryTransformerCache",
    "MemoryTransformerChapterRouter",
    "MemoryTransformerFactorizedMemoryBank",
    "MemoryTransformerForCausalLM",
    "MemoryTransformerForSequenceClassification",
    "MemoryTransformerForTokenClassification",
    "MemoryTransformerMemoryBank",
    "MemoryTransformerMemoryBlock",
    "MemoryTransformerModel",
    "MemoryTransformerPreTrainedModel",
    "MemoryTransformerReducedDimMemoryBank",
    "MemoryTransformerStandardMemoryBank",
    "build_memory_bank",
    "memory_router_statistics",
    "padding_mask",
]

"""GMMXLNet: MemXLNet whose memory is a gated mixture of k expert memories.

After every segment a router turns the pooled `[MEM_WRITE_i]` states into routing probabilities p (batch, k); each
expert j applies its own gated update scaled by p_j, so rarely chosen experts change little and can specialise.
The `[MEM_READ_i]` tokens of the next segment receive the routing-weighted sum of the experts. Load-balance and
entropy losses on p are added to the QA loss with their config weights (as Mixtral adds `router_aux_loss_coef`).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput

from .configuration_memxlnet import GMMXLNetConfig
from .modeling_memxlnet import MemXLNetForQuestionAnswering, MemXLNetPreTrainedModel


@dataclass
class GMMXLNetQuestionAnsweringOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `start_positions` and `end_positions` are given):
        Span loss plus `load_balance_weight * load_balance_loss + entropy_regularization_weight * entropy_loss`.
    start_logits (`torch.FloatTensor` of shape `(batch_size, sequence_length)`):
        Span-start scores.
    end_logits (`torch.FloatTensor` of shape `(batch_size, sequence_length)`):
        Span-end scores.
    memory_state (`torch.FloatTensor` of shape `(batch_size, num_memory_experts + 1, memory_num_tokens, d_model)`):
        The k expert memories after this segment, then the aggregated memory the next segment reads; pass it as
        `memory_state` to the next segment of the same documents.
    routing_probs (`torch.FloatTensor` of shape `(batch_size, num_memory_experts)`):
        Write routing of this segment: how strongly each expert was updated.
    read_routing_probs (`torch.FloatTensor` of shape `(batch_size, num_memory_experts)`, *optional*):
        Read routing (only with `routing_mode="read-based"`): the expert weights of the next segment's read.
    load_balance_loss (`torch.FloatTensor` of shape `()`):
        Switch-style k * sum_j f_j * P_j over the active rows (1 when balanced, k when collapsed), unweighted.
    entropy_loss (`torch.FloatTensor` of shape `()`):
        log(k) minus the mean routing entropy of the active rows (0 for uniform routing), unweighted.
    aux_loss (`torch.FloatTensor` of shape `()`):
        The weighted routing losses, already inside `loss`; trainers that compute their own span loss from the
        logits (e.g. a document-level softmax) add it to theirs.
    """

    loss: torch.FloatTensor | None = None
    start_logits: torch.FloatTensor | None = None
    end_logits: torch.FloatTensor | None = None
    memory_state: torch.FloatTensor | None = None
    routing_probs: torch.FloatTensor | None = None
    read_routing_probs: torch.FloatTensor | None = None
    load_balance_loss: torch.FloatTensor | None = None
    entropy_loss: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def routing_entropy(routing_probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of each routing distribution: (..., k) -> (...)."""
    return -(routing_probs * torch.log(routing_probs.clamp(min=1e-9))).sum(-1)


def _row_weights(routing_probs: torch.Tensor, row_mask: torch.Tensor | None) -> torch.Tensor:
    if row_mask is None:
        return routing_probs.new_ones(routing_probs.shape[0])
    return row_mask.to(routing_probs.dtype).view(-1)


def load_balance_loss(routing_probs: torch.Tensor, row_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformer balance loss k * sum_j f_j P_j: f_j = share of rows whose top expert is j, P_j = mean p_j."""
    weights = _row_weights(routing_probs, row_mask)
    total = weights.sum().clamp(min=1)
    num_experts = routing_probs.shape[-1]
    top_choice = F.one_hot(routing_probs.argmax(-1), num_experts).to(routing_probs.dtype)
    fraction = (top_choice * weights.unsqueeze(-1)).sum(0) / total
    mean_probability = (routing_probs * weights.unsqueeze(-1)).sum(0) / total
    return num_experts * (fraction * mean_probability).sum()


def entropy_loss(routing_probs: torch.Tensor, row_mask: torch.Tensor | None = None) -> torch.Tensor:
    """log(k) - mean routing entropy: minimising it keeps routing soft (prevents premature collapse)."""
    weights = _row_weights(routing_probs, row_mask)
    entropy_gap = math.log(routing_probs.shape[-1]) - routing_entropy(routing_probs)
    return (entropy_gap * weights).sum() / weights.sum().clamp(min=1)


class GMMXLNetRouter(nn.Module):
    """Pools slot states (mean, max or learned attention over present slots) and maps them to expert probabilities.

    The attention scores have no bias: a softmax over slots ignores a constant shift, so a bias would never learn."""

    def __init__(self, config: GMMXLNetConfig):
        super().__init__()
        self.pooling_method = config.pooling_method
        self.temperature = config.routing_temperature
        self.attention_score = nn.Linear(config.d_model, 1, bias=False) if config.pooling_method == "attention" else None
        self.proj = nn.Linear(config.d_model, config.num_memory_experts)

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, m, d) states with a (batch, m) presence mask -> (batch, d); rows without any slot pool to 0."""
        present = mask.unsqueeze(-1)
        if self.pooling_method == "mean":
            return (states * present).sum(1) / present.sum(1).clamp(min=1).to(states.dtype)
        lowest = torch.finfo(states.dtype).min
        if self.pooling_method == "max":
            pooled = states.masked_fill(~present, lowest).amax(1)
            return torch.where(mask.any(-1, keepdim=True), pooled, torch.zeros_like(pooled))
        scores = self.attention_score(states).squeeze(-1).masked_fill(~mask, lowest)
        return torch.einsum("bm,bmd->bd", torch.softmax(scores, dim=-1) * mask, states)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.proj(self.pool(states, mask))
        return torch.softmax(logits / self.temperature, dim=-1)


class GMMXLNetExpertMemory(nn.Module):
    """k expert memories of m slots, a router, routing-modulated per-expert gated updates and an aggregated read.

    The state is (batch, k + 1, m, d): the k expert memories, then the memory the next segment's READ tokens show,
    sum_j q_j M_j, where q is this segment's write routing (write-based) or the read router's output on this
    segment's READ-token states (read-based). Per expert j, with x = [M_j ; W] (W = WRITE-token states):
    g_j = p_j * sigmoid(A_j x), u_j = tanh(B_j x), M_j' = g_j * u_j + (1 - g_j) * M_j. The k experts' weights are
    stacked and applied with one einsum each, without a Python loop over experts.
    """

    def __init__(self, config: GMMXLNetConfig):
        super().__init__()
        self.num_experts = k = config.num_memory_experts
        self.num_tokens = m = config.memory_num_tokens
        self.hidden_size = d = config.d_model
        self.init_strategies = list(config.expert_init_strategies)
        self.initial_experts = nn.Parameter(torch.zeros(k, m, d))
        self.write_router = GMMXLNetRouter(config)
        self.read_router = GMMXLNetRouter(config) if config.routing_mode == "read-based" else None
        self.uses_read_states = self.read_router is not None
        # Gate and candidate halves side by side: [..., :d] gate, [..., d:] candidate.
        self.state_weight = nn.Parameter(torch.zeros(k, d, 2 * d))
        self.written_weight = nn.Parameter(torch.zeros(k, d, 2 * d))
        self.update_bias = nn.Parameter(torch.zeros(k, 2 * d))

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.num_experts + 1, self.num_tokens, self.hidden_size)

    def initial_experts_for_strategies(self, std: float) -> torch.Tensor:
        """Initial expert memories following `expert_init_strategies`; orthogonal experts are mutually orthogonal."""
        k, m, d = self.initial_experts.shape
        reference = self.initial_experts
        orthogonal = torch.empty(k * m, d, device=reference.device, dtype=torch.float32)
        nn.init.orthogonal_(orthogonal)
        # Unit rows rescaled to the norm of an N(0, std^2) row, the scale of the learned init and the embeddings.
        candidates = {
            "orthogonal": orthogonal.view(k, m, d) * (std * math.sqrt(d)),
            "learned": torch.randn(k, m, d, device=reference.device) * std,
            "zeros": torch.zeros(k, m, d, device=reference.device),
        }
        experts = [candidates[strategy][j] for j, strategy in enumerate(self.init_strategies)]
        return torch.stack(experts).to(reference.dtype)

    def initial_state(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        experts = self.initial_experts.to(like.dtype)
        state = torch.cat([experts, experts.mean(0, keepdim=True)], dim=0)
        return state.unsqueeze(0).expand(batch_size, -1, -1, -1)

    def expert_memories(self, state: torch.Tensor) -> torch.Tensor:
        """The (batch, k, m, d) expert memories inside a state."""
        return state[:, : self.num_experts]

    def read(self, state: torch.Tensor) -> torch.Tensor:
        return state[:, self.num_experts]

    def write(
        self,
        state: torch.Tensor,
        written: torch.Tensor,
        written_mask: torch.Tensor,
        read_states: torch.Tensor | None = None,
        read_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        experts = self.expert_memories(state)
        routing_probs = self.write_router(written, written_mask)
        projected = (
            torch.einsum("bkmd,kde->bkme", experts, self.state_weight)
            + torch.einsum("bmd,kde->bkme", written, self.written_weight)
            + self.update_bias.unsqueeze(1)
        )
        gate_logits, candidate = projected.chunk(2, dim=-1)
        gate = routing_probs[:, :, None, None] * torch.sigmoid(gate_logits)
        updated = gate * torch.tanh(candidate) + (1 - gate) * experts
        experts = torch.where(written_mask[:, None, :, None], updated, experts)

        outputs = {"routing_probs": routing_probs}
        read_probs = routing_probs
        if self.read_router is not None:
            read_probs = outputs["read_routing_probs"] = self.read_router(read_states, read_mask)
        read_memory = torch.einsum("bk,bkmd->bmd", read_probs, experts)
        return torch.cat([experts, read_memory.unsqueeze(1)], dim=1), outputs


class GMMXLNetPreTrainedModel(MemXLNetPreTrainedModel):
    """MemXLNet with the expert-mixture memory; reuses MemXLNet's read / XLNet / write pipeline."""

    config: GMMXLNetConfig
    config_class = GMMXLNetConfig
    auto_map_entries = {"AutoModelForQuestionAnswering": "modeling_gmmxlnet.GMMXLNetForQuestionAnswering"}

    def _build_memory(self) -> nn.Module:
        return GMMXLNetExpertMemory(self.config)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, GMMXLNetExpertMemory):
            std = self.config.initializer_range
            init.copy_(module.initial_experts, module.initial_experts_for_strategies(std))
            for weight in (module.state_weight, module.written_weight):
                init.normal_(weight, mean=0.0, std=std)
            init.zeros_(module.update_bias)


class GMMXLNetForQuestionAnswering(GMMXLNetPreTrainedModel, MemXLNetForQuestionAnswering):
    """Extractive QA over one segment, carrying k expert memories to the next segment.

    `memory_state` has shape `(batch_size, num_memory_experts + 1, memory_num_tokens, d_model)`: the experts, then
    the aggregated memory the next segment reads. The weighted routing losses (`aux_loss`) are part of `loss`, and
    rows masked by `segment_mask` add nothing to them.
    """

    output_class = GMMXLNetQuestionAnsweringOutput

    def _memory_outputs(self, memory_outputs: dict, segment_mask: torch.Tensor | None) -> dict:
        routing_probs = memory_outputs["routing_probs"]
        balance = load_balance_loss(routing_probs, segment_mask)
        entropy = entropy_loss(routing_probs, segment_mask)
        return {
            "routing_probs": routing_probs,
            "read_routing_probs": memory_outputs.get("read_routing_probs"),
            "load_balance_loss": balance,
            "entropy_loss": entropy,
            "aux_loss": self.config.load_balance_weight * balance
            + self.config.entropy_regularization_weight * entropy,
        }


__all__ = [
    "GMMXLNetExpertMemory",
    "GMMXLNetForQuestionAnswering",
    "GMMXLNetPreTrainedModel",
    "GMMXLNetQuestionAnsweringOutput",
    "GMMXLNetRouter",
    "entropy_loss",
    "load_balance_loss",
    "routing_entropy",
]

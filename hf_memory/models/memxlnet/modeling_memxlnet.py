"""MemXLNet: XLNet with memory tokens whose state is carried, with gradients, across document segments.

XLNet's own `mems` are detached, so memory that must learn travels through `inputs_embeds`: the embeddings at the
`[MEM_READ_i]` positions are replaced by the current memory, and the last hidden states at the `[MEM_WRITE_i]`
positions become the new content (RMT-style). Memory positions are found from token ids, so any layout works.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput
from transformers.models.xlnet.modeling_xlnet import XLNetLayer, XLNetModel, XLNetPreTrainedModel

from .configuration_memxlnet import MemXLNetConfig
from .tokenization_memxlnet import add_memory_tokens

try:  # model cards need hf_memory; checkpoints loaded as remote code work without it
    from hf_memory.model_cards import ModelCardMixin
except ImportError:

    class ModelCardMixin:
        """Without hf_memory, checkpoints are saved without a model card."""


@dataclass
class MemXLNetModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, d_model)`):
        Last-layer hidden states (memory positions included).
    memory_state (`torch.FloatTensor`):
        Memory after this segment; pass it as `memory_state` to the next segment of the same documents.
    """

    last_hidden_state: torch.FloatTensor | None = None
    memory_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MemXLNetQuestionAnsweringOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `start_positions` and `end_positions` are given):
        Mean of the start and end cross-entropies over the active rows of the batch.
    start_logits (`torch.FloatTensor` of shape `(batch_size, sequence_length)`):
        Span-start scores.
    end_logits (`torch.FloatTensor` of shape `(batch_size, sequence_length)`):
        Span-end scores.
    memory_state (`torch.FloatTensor`):
        Memory after this segment; pass it as `memory_state` to the next segment of the same documents.
    """

    loss: torch.FloatTensor | None = None
    start_logits: torch.FloatTensor | None = None
    end_logits: torch.FloatTensor | None = None
    memory_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class MemXLNetTokenMemory(nn.Module):
    """The memory is m vectors; READ tokens show them, WRITE token states update them (gated or replaced)."""

    # `gated_replace` starts with sigmoid(2) ~ 0.88 of each write taken: near the replacing update, which generalises
    # to longer documents than the tanh-candidate gate, while the gate can still learn to keep slots.
    replace_gate_initial_bias = 2.0

    def __init__(self, config: MemXLNetConfig):
        super().__init__()
        self.num_tokens = config.memory_num_tokens
        self.hidden_size = config.d_model
        self.update_rule = config.memory_update
        learned = config.memory_init == "learned"
        self.initial_memory = nn.Parameter(torch.zeros(self.num_tokens, self.hidden_size)) if learned else None
        if self.update_rule in ("gated", "gated_replace"):
            self.gate_proj = nn.Linear(2 * self.hidden_size, self.hidden_size)
        if self.update_rule == "gated":
            self.update_proj = nn.Linear(2 * self.hidden_size, self.hidden_size)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.num_tokens, self.hidden_size)

    def initial_state(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        if self.initial_memory is None:
            return like.new_zeros(batch_size, *self.state_shape)
        return self.initial_memory.unsqueeze(0).expand(batch_size, -1, -1)

    def read(self, state: torch.Tensor) -> torch.Tensor:
        return state

    def write(self, state: torch.Tensor, written: torch.Tensor, written_mask: torch.Tensor) -> torch.Tensor:
        """`written` (batch, m, d) are the WRITE-token states; slots whose token was absent keep their memory."""
        if self.update_rule == "none":
            updated = written
        else:
            joint = torch.cat([state, written], dim=-1)
            gate = torch.sigmoid(self.gate_proj(joint))
            candidate = torch.tanh(self.update_proj(joint)) if self.update_rule == "gated" else written
            updated = gate * candidate + (1 - gate) * state
        return torch.where(written_mask.unsqueeze(-1), updated, state)


def _content_weights(keys: torch.Tensor, strengths: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Softmax over rows of strength * cosine(key, row): keys (B,H,d), strengths (B,H), memory (B,S,d) -> (B,H,S)."""
    similarity = torch.einsum("bhd,bsd->bhs", F.normalize(keys, dim=-1, eps=1e-6), F.normalize(memory, dim=-1, eps=1e-6))
    return torch.softmax(strengths.unsqueeze(-1) * similarity, dim=-1)


def _allocation_weights(usage: torch.Tensor) -> torch.Tensor:
    """DNC allocation: the least-used rows get the write, (1 - u_j) * prod of the usages of less-used rows."""
    sorted_usage, order = torch.sort(usage, dim=-1)
    exclusive_product = torch.cumprod(
        torch.cat([torch.ones_like(sorted_usage[..., :1]), sorted_usage[..., :-1]], dim=-1), dim=-1
    )
    sorted_allocation = (1 - sorted_usage) * exclusive_product
    return torch.zeros_like(usage).scatter(-1, order, sorted_allocation)


class MemXLNetDifferentiableMemory(nn.Module):
    """A content-addressed memory matrix (DNC-style) driven by the WRITE-token states.

    After a segment, the pooled WRITE states parameterise `memory_num_heads` write heads (erase and add vectors,
    content or usage-based addressing), then WRITE token i drives read head i (content, forward or backward along
    the temporal links). The m read vectors fill the READ tokens of the next segment. The state is one flat tensor
    per document so that trainers and pipelines can carry it like token memory.
    """

    def __init__(self, config: MemXLNetConfig):
        super().__init__()
        self.num_tokens = m = config.memory_num_tokens
        self.num_slots = s = config.memory_slots
        self.num_heads = h = config.memory_num_heads
        self.hidden_size = d = config.d_model
        self.use_usage_tracking = config.memory_use_usage_tracking
        self.use_temporal_links = config.memory_use_temporal_links
        self.state_sizes = {"memory": s * d, "usage": s, "links": s * s, "precedence": s, "read_weights": m * s,
                            "read_vectors": m * d}
        learned = config.memory_init == "learned"
        self.initial_memory = nn.Parameter(torch.zeros(s, d)) if learned else None
        self.initial_read_vectors = nn.Parameter(torch.zeros(m, d)) if learned else None
        # Per write head: key d, strength 1, erase d, add d, write gate 1, allocation gate 1.
        self.write_interface = nn.Linear(d, h * (3 * d + 3))
        # Per read head: key d, strength 1, free gate 1, three read modes (backward, content, forward).
        self.read_interface = nn.Linear(d, d + 5)
        self.read_output = nn.Linear(d, d)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (sum(self.state_sizes.values()),)

    def _unpack(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        s, m, d, batch = self.num_slots, self.num_tokens, self.hidden_size, state.shape[0]
        parts = dict(zip(self.state_sizes, torch.split(state, list(self.state_sizes.values()), dim=-1)))
        shapes = {"memory": (s, d), "usage": (s,), "links": (s, s), "precedence": (s,), "read_weights": (m, s),
                  "read_vectors": (m, d)}
        return {name: part.reshape(batch, *shapes[name]) for name, part in parts.items()}

    def _pack(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = parts["memory"].shape[0]
        return torch.cat([parts[name].reshape(batch, -1) for name in self.state_sizes], dim=-1)

    def initial_state(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        parts = {name: like.new_zeros(batch_size, size) for name, size in self.state_sizes.items()}
        if self.initial_memory is not None:
            parts["memory"] = self.initial_memory.reshape(1, -1).expand(batch_size, -1)
            parts["read_vectors"] = self.initial_read_vectors.reshape(1, -1).expand(batch_size, -1)
        return torch.cat([parts[name] for name in self.state_sizes], dim=-1)

    def read(self, state: torch.Tensor) -> torch.Tensor:
        return self._unpack(state)["read_vectors"]

    def write(self, state: torch.Tensor, written: torch.Tensor, written_mask: torch.Tensor) -> torch.Tensor:
        batch, h, d = written.shape[0], self.num_heads, self.hidden_size
        previous = self._unpack(state)
        memory, usage = previous["memory"], previous["usage"]
        present = written_mask.to(written.dtype).unsqueeze(-1)
        pooled = (written * present).sum(1) / present.sum(1).clamp(min=1)

        interface = self.write_interface(pooled).view(batch, h, 3 * d + 3)
        key, erase, add, scalars = interface.split([d, d, d, 3], dim=-1)
        strength = 1 + F.softplus(scalars[..., 0])
        write_gate, allocation_gate = torch.sigmoid(scalars[..., 1:2]), torch.sigmoid(scalars[..., 2:3])
        content = _content_weights(key, strength, memory)
        if self.use_usage_tracking:
            allocation = _allocation_weights(usage).unsqueeze(1)
            content = allocation_gate * allocation + (1 - allocation_gate) * content
        write_weights = write_gate * content  # (B, H, S)
        erase_factor = torch.prod(1 - write_weights.unsqueeze(-1) * torch.sigmoid(erase).unsqueeze(2), dim=1)
        memory = memory * erase_factor + torch.einsum("bhs,bhd->bsd", write_weights, add)
        combined_write = 1 - torch.prod(1 - write_weights, dim=1)  # (B, S)

        read_interface = self.read_interface(written)  # (B, m, d + 5)
        read_key, read_scalars = read_interface.split([d, 5], dim=-1)
        read_weights = _content_weights(read_key, 1 + F.softplus(read_scalars[..., 0]), memory)
        free_gate = torch.sigmoid(read_scalars[..., 1:2])
        retention = torch.prod(1 - free_gate * previous["read_weights"], dim=1)
        usage = (usage + combined_write - usage * combined_write) * retention if self.use_usage_tracking else usage

        links, precedence = previous["links"], previous["precedence"]
        if self.use_temporal_links:
            outer_write = combined_write.unsqueeze(-1) + combined_write.unsqueeze(-2)
            links = (1 - outer_write) * links + combined_write.unsqueeze(-1) * precedence.unsqueeze(-2)
            links = links * (1 - torch.eye(self.num_slots, device=links.device, dtype=links.dtype))
            precedence = (1 - combined_write.sum(-1, keepdim=True)) * precedence + combined_write
            modes = torch.softmax(read_scalars[..., 2:], dim=-1)
            forward = torch.einsum("bij,bmj->bmi", links, previous["read_weights"])
            backward = torch.einsum("bji,bmj->bmi", links, previous["read_weights"])
            read_weights = modes[..., :1] * backward + modes[..., 1:2] * read_weights + modes[..., 2:] * forward

        read_vectors = self.read_output(torch.einsum("bms,bsd->bmd", read_weights, memory))
        new = {"memory": memory, "usage": usage, "links": links, "precedence": precedence,
               "read_weights": read_weights, "read_vectors": read_vectors}
        any_written = written_mask.any(-1, keepdim=True)
        return torch.where(any_written, self._pack(new), state)


class MemXLNetLayer(GradientCheckpointingLayer, XLNetLayer):
    """XLNet's layer made checkpointable: long documents hold the activations of every segment for BPTT."""


MEMORY_IMPLEMENTATIONS = {"token": MemXLNetTokenMemory, "differentiable": MemXLNetDifferentiableMemory}


# XLNet inputs that MemXLNet does not use: its memory replaces `mems`, and it reads segments left to right.
UNSUPPORTED_XLNET_INPUTS = ("mems", "perm_mask", "target_mapping", "input_mask", "head_mask")


def reject_unsupported_xlnet_inputs(kwargs: dict) -> None:
    """XLNet arguments that would otherwise vanish into `**kwargs` unnoticed."""
    given = [name for name in UNSUPPORTED_XLNET_INPUTS if kwargs.get(name) is not None]
    if kwargs.get("use_mems"):
        given.append("use_mems")
    if given:
        raise ValueError(
            f"MemXLNet does not take {given}: XLNet's mems are detached, so the memory travels through "
            "memory_state instead. Fix: pass the previous segment's outputs.memory_state as memory_state= (and "
            "attention_mask instead of input_mask)."
        )


class MemXLNetPreTrainedModel(ModelCardMixin, XLNetPreTrainedModel):
    """Holds the memory logic shared by the encoder and the task heads: read, run XLNet, write."""

    config: MemXLNetConfig
    config_class = MemXLNetConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    # Every Auto class a checkpoint can be loaded with.
    auto_map_entries = {
        "AutoModel": "modeling_memxlnet.MemXLNetModel",
        "AutoModelForQuestionAnswering": "modeling_memxlnet.MemXLNetForQuestionAnswering",
    }

    def __init__(self, config: MemXLNetConfig):
        super().__init__(config)
        self.transformer = XLNetModel(config)
        # XLNet builds its attention parameters as torch.FloatTensor, which ignores the default dtype that
        # `from_pretrained(..., dtype=torch.bfloat16)` sets while the model is built: give them that dtype
        self.transformer.to(torch.get_default_dtype())
        for layer in self.transformer.layer:
            layer.__class__ = MemXLNetLayer
        self.memory = self._build_memory() if config.memory_num_tokens else None
        self.backward_memory = self._build_backward_memory()

    def _build_backward_memory(self) -> nn.Module | None:
        """The second memory of `reading_order="bidirectional"`, which reads documents last segment first."""
        if self.config.memory_num_tokens and self.config.reading_order == "bidirectional":
            return self._build_memory()
        return None

    def _build_memory(self) -> nn.Module:
        """The memory module for `self.config`; subclasses with another memory (GMM) override this."""
        return MEMORY_IMPLEMENTATIONS[self.config.memory_impl](self.config)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, (MemXLNetTokenMemory, MemXLNetDifferentiableMemory)):
            for initial in (module.initial_memory, getattr(module, "initial_read_vectors", None)):
                if initial is not None:
                    init.normal_(initial, mean=0.0, std=std)
        if isinstance(module, MemXLNetTokenMemory) and module.update_rule == "gated_replace":
            init.constant_(module.gate_proj.bias, module.replace_gate_initial_bias)

    def _memory_module(self, use_backward_memory: bool) -> nn.Module | None:
        if not use_backward_memory:
            return self.memory
        if self.backward_memory is None:
            raise ValueError(
                f"use_backward_memory=True needs the second memory of reading_order='bidirectional', but this model "
                f"reads {self.config.reading_order!r} with memory_num_tokens={self.config.memory_num_tokens}. Fix: "
                "drop use_backward_memory (the model's one memory reads in its reading_order)."
            )
        return self.backward_memory

    def get_initial_memory_state(self, batch_size: int, use_backward_memory: bool = False) -> torch.Tensor | None:
        """The memory a document starts with (`None` without memory); of the backward pass's memory with
        `use_backward_memory` (`reading_order="bidirectional"`)."""
        memory = self._memory_module(use_backward_memory)
        if memory is None:
            return None
        return memory.initial_state(batch_size, like=self.transformer.word_embedding.weight)

    def enable_memory(self, memory_num_tokens: int, tokenizer=None, **memory_config):
        """Give a no-memory model (e.g. a plain or fine-tuned XLNet) `memory_num_tokens` memory slots.

        Adds the memory tokens to `tokenizer` (if given), grows the embedding matrix, stores the token ids in the
        config and initialises the memory parameters; the XLNet weights are kept.
        """
        if self.memory is not None:
            raise ValueError(
                f"This model already has memory_num_tokens={self.config.memory_num_tokens}. Fix: start from a "
                "no-memory checkpoint to change the number of memory tokens."
            )
        if memory_num_tokens <= 0:
            raise ValueError(f"memory_num_tokens must be > 0 to enable memory, got {memory_num_tokens}.")
        vocab_size = self.config.vocab_size
        if tokenizer is not None:
            if len(tokenizer) > vocab_size:
                raise ValueError(
                    f"The tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embeddings. "
                    "Fix: pass the tokenizer the model was trained with."
                )
            read_ids, write_ids = add_memory_tokens(tokenizer, memory_num_tokens)
            new_vocab_size = max(len(tokenizer), vocab_size)
        else:
            read_ids = list(range(vocab_size, vocab_size + memory_num_tokens))
            write_ids = list(range(vocab_size + memory_num_tokens, vocab_size + 2 * memory_num_tokens))
            new_vocab_size = vocab_size + 2 * memory_num_tokens
        self.resize_token_embeddings(new_vocab_size, mean_resizing=False)
        for field, value in memory_config.items():
            if not hasattr(self.config, field):
                raise ValueError(f"Unknown memory option {field!r}.")
            setattr(self.config, field, value)
        self.config.memory_num_tokens = memory_num_tokens
        self.config.mem_read_token_ids, self.config.mem_write_token_ids = read_ids, write_ids
        self.config.vocab_size = new_vocab_size
        self.config._validate_memory_fields()
        self.config._validate_memory_token_ids()
        reference = self.transformer.word_embedding.weight
        self.memory = self._build_memory().to(reference.device, reference.dtype)
        self.memory.apply(self._init_weights)
        self.backward_memory = self._build_backward_memory()
        if self.backward_memory is not None:
            self.backward_memory.to(reference.device, reference.dtype).apply(self._init_weights)
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, memory_num_tokens: int | None = None, **kwargs):
        """Like `PreTrainedModel.from_pretrained`; `memory_num_tokens=m` adds memory to a no-memory checkpoint."""
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if memory_num_tokens is not None and memory_num_tokens != model.config.memory_num_tokens:
            model.enable_memory(memory_num_tokens)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Records every Auto class in `auto_map` (save_pretrained itself only records the saved class)."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self.auto_map_entries}
        super().save_pretrained(save_directory, *args, **kwargs)

    def _check_memory_state(self, memory_state: torch.Tensor, batch_size: int):
        expected = (batch_size, *self.memory.state_shape)
        if tuple(memory_state.shape) != expected:
            raise ValueError(
                f"memory_state has shape {tuple(memory_state.shape)}, expected {expected} "
                f"(memory_impl={self.config.memory_impl!r}, memory_num_tokens={self.config.memory_num_tokens}). "
                "Fix: pass the memory_state returned for the previous segment of the same documents, or None for "
                "the initial memory."
            )

    def _slot_one_hot(self, input_ids: torch.Tensor, kind: str) -> torch.Tensor:
        """(batch, seq, m) indicator of which memory token sits at each position."""
        ids = torch.tensor(getattr(self.config, f"mem_{kind}_token_ids"), device=input_ids.device)
        return input_ids.unsqueeze(-1) == ids

    @staticmethod
    def _gather_slot_states(slot_one_hot: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean hidden state at each memory slot's positions: (batch, m, d), plus a (batch, m) presence mask."""
        counts = slot_one_hot.sum(1)
        states = torch.einsum("blm,bld->bmd", slot_one_hot.to(hidden.dtype), hidden)
        return states / counts.clamp(min=1).unsqueeze(-1).to(hidden.dtype), counts > 0

    def _encode(
        self,
        input_ids,
        attention_mask,
        token_type_ids,
        memory_state,
        segment_mask,
        inputs_embeds,
        output_attentions,
        output_hidden_states,
        return_memory_outputs=False,
        use_backward_memory=False,
    ):
        """Read memory into the input, run XLNet, write the new memory. Returns (XLNet outputs, new memory).

        A memory module whose `write` returns `(new_state, outputs_dict)` (GMM routing) gets that dict returned as a
        third element when `return_memory_outputs=True`; one with `uses_read_states = True` also receives the
        `[MEM_READ_i]` hidden states as `read_states`/`read_mask`. `use_backward_memory` reads and writes the second
        memory of a bidirectional model instead of the first.
        """
        memory = self._memory_module(use_backward_memory)
        if memory is None:
            outputs = self.transformer(
                input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds,
                use_mems=False, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                return_dict=True,
            )
            return (outputs, None, {}) if return_memory_outputs else (outputs, None)
        if input_ids is None:
            raise ValueError("MemXLNet with memory needs input_ids to locate the memory tokens. Fix: pass input_ids.")
        batch_size = input_ids.shape[0]
        if memory_state is None:
            memory_state = self.get_initial_memory_state(batch_size, use_backward_memory)
        self._check_memory_state(memory_state, batch_size)

        read_one_hot = self._slot_one_hot(input_ids, "read")
        read_positions = read_one_hot.any(-1, keepdim=True)
        if not bool(read_positions.any()):
            raise ValueError(
                "input_ids contain none of the [MEM_READ_i] token ids of config.mem_read_token_ids="
                f"{self.config.mem_read_token_ids} although memory_num_tokens={self.config.memory_num_tokens}. Fix: "
                "build inputs with hf_memory's segmenter (memory tokens in every segment) from a tokenizer prepared "
                "with hf_memory.add_memory_tokens, and build the config with that tokenizer's ids "
                "(read_ids, write_ids = hf_memory.get_memory_token_ids(tokenizer, memory_num_tokens); "
                "MemXLNetConfig(..., mem_read_token_ids=read_ids, mem_write_token_ids=write_ids)): the config's default "
                "ids follow its vocab_size and need not match the tokenizer's."
            )
        if inputs_embeds is None:
            inputs_embeds = self.transformer.word_embedding(input_ids)
        memory_values = memory.read(memory_state).to(inputs_embeds.dtype)
        read_values = torch.einsum("blm,bmd->bld", read_one_hot.to(inputs_embeds.dtype), memory_values)
        inputs_embeds = torch.where(read_positions, read_values, inputs_embeds)

        outputs = self.transformer(
            attention_mask=attention_mask, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds,
            use_mems=False, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        written, written_mask = self._gather_slot_states(self._slot_one_hot(input_ids, "write"), hidden)
        write_inputs = {}
        if getattr(memory, "uses_read_states", False):
            read_states, write_inputs["read_mask"] = self._gather_slot_states(read_one_hot, hidden)
            write_inputs["read_states"] = read_states.to(memory_state.dtype)
        new_state = memory.write(memory_state, written.to(memory_state.dtype), written_mask, **write_inputs)
        new_state, memory_outputs = new_state if isinstance(new_state, tuple) else (new_state, {})
        if segment_mask is not None:
            keep = segment_mask.to(torch.bool).view(batch_size, *([1] * (new_state.dim() - 1)))
            new_state = torch.where(keep, new_state, memory_state)
        return (outputs, new_state, memory_outputs) if return_memory_outputs else (outputs, new_state)


class MemXLNetModel(MemXLNetPreTrainedModel):
    """The memory-augmented XLNet encoder without a task head."""

    def __init__(self, config: MemXLNetConfig):
        super().__init__(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        memory_state: torch.Tensor | None = None,
        segment_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        use_backward_memory: bool = False,
        **kwargs,
    ) -> MemXLNetModelOutput | tuple:
        r"""
        use_backward_memory (`bool`, *optional*, defaults to `False`):
            Read and write the second memory of a `reading_order="bidirectional"` model (its backward pass).
        """
        reject_unsupported_xlnet_inputs(kwargs)
        outputs, new_state = self._encode(
            input_ids, attention_mask, token_type_ids, memory_state, segment_mask, inputs_embeds,
            output_attentions, output_hidden_states, use_backward_memory=use_backward_memory,
        )
        result = MemXLNetModelOutput(
            last_hidden_state=outputs.last_hidden_state,
            memory_state=new_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return result if return_dict is not False else result.to_tuple()


def span_loss(start_logits, end_logits, start_positions, end_positions, row_mask=None):
    """Mean of start/end cross-entropy over active rows; positions outside the sequence are ignored (as XLNet)."""
    seq_len = start_logits.shape[1]
    start_positions = start_positions.view(-1).clamp(0, seq_len)
    end_positions = end_positions.view(-1).clamp(0, seq_len)
    if row_mask is not None:
        inactive = ~row_mask.to(torch.bool).view(-1)
        start_positions = start_positions.masked_fill(inactive, seq_len)
        end_positions = end_positions.masked_fill(inactive, seq_len)
    per_row = F.cross_entropy(start_logits, start_positions, ignore_index=seq_len, reduction="none")
    per_row = (per_row + F.cross_entropy(end_logits, end_positions, ignore_index=seq_len, reduction="none")) / 2
    counted = (start_positions != seq_len) | (end_positions != seq_len)
    return (per_row * counted).sum() / counted.sum().clamp(min=1)


class MemXLNetForQuestionAnswering(MemXLNetPreTrainedModel):
    """Extractive QA (start/end span head) over one segment, carrying memory to the next segment."""

    output_class = MemXLNetQuestionAnsweringOutput

    def __init__(self, config: MemXLNetConfig):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.d_model, 2)
        self.post_init()

    def _memory_outputs(self, memory_outputs: dict, segment_mask: torch.Tensor | None) -> dict:
        """Extra output fields from the memory module (e.g. GMM routing); an `aux_loss` among them joins the loss."""
        return {}

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        memory_state: torch.Tensor | None = None,
        segment_mask: torch.Tensor | None = None,
        start_positions: torch.LongTensor | None = None,
        end_positions: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        use_backward_memory: bool = False,
        **kwargs,
    ) -> MemXLNetQuestionAnsweringOutput | tuple:
        r"""
        memory_state (`torch.Tensor`, *optional*):
            Memory returned for the previous segment of the same documents (previous in the reading order); `None`
            starts from the initial memory.
        segment_mask (`torch.BoolTensor` of shape `(batch_size,)`, *optional*):
            `False` for documents that have no segment at this step: their memory passes through unchanged and
            they add nothing to the loss.
        start_positions, end_positions (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Labels of the answer span in this segment (the `<cls>` index when the answer is not inside it).
        use_backward_memory (`bool`, *optional*, defaults to `False`):
            Read and write the second memory of a `reading_order="bidirectional"` model: its backward pass, whose
            span logits are added to those of the forward pass.
        """
        reject_unsupported_xlnet_inputs(kwargs)
        outputs, new_state, memory_outputs = self._encode(
            input_ids, attention_mask, token_type_ids, memory_state, segment_mask, inputs_embeds,
            output_attentions, output_hidden_states, return_memory_outputs=True,
            use_backward_memory=use_backward_memory,
        )
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = (part.squeeze(-1).contiguous() for part in logits.split(1, dim=-1))
        extra_outputs = self._memory_outputs(memory_outputs, segment_mask)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start_logits, end_logits, start_positions, end_positions, segment_mask)
            if "aux_loss" in extra_outputs:
                loss = loss + extra_outputs["aux_loss"]
        result = self.output_class(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            memory_state=new_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **extra_outputs,
        )
        return result if return_dict is not False else result.to_tuple()


__all__ = [
    "MemXLNetForQuestionAnswering",
    "MemXLNetModel",
    "MemXLNetPreTrainedModel",
    "MemXLNetModelOutput",
    "MemXLNetQuestionAnsweringOutput",
    "span_loss",
]

"""Memory sublayers injected into the decoder layers of a pretrained causal LM.

The memory itself (banks, causal chapter router, cross-attention block with a zero-initialised output projection,
generation cache) is the MemoryTransformer's: this module only builds a `MemoryTransformerConfig` from the base
model's dimensions and wires those modules into foreign decoder layers.

Injection changes the class of each target decoder layer to a subclass that adds the memory sublayer (PEFT replaces
modules instead; here the layer object, its parameter names, transformers' output-capturing hooks and gradient
checkpointing must all stay in place, which only an in-place subclass keeps). `remove_memory_layer` restores it.
"""

from typing import Optional

import torch
from torch import nn

from ..models.memory_transformer.configuration_memory_transformer import MemoryTransformerConfig
from ..models.memory_transformer.modeling_memory_transformer import (
    MemoryCache,
    MemoryTransformerMemoryBank,
    MemoryTransformerMemoryBlock,
    build_memory_bank,
    memory_router_statistics,
    padding_mask,
)
from .config import MemoryAdapterConfig


MEMORY_ADAPTER_MODULE_NAME = "memory_adapter"
MEMORY_BANKS_MODULE_NAME = "memory_banks"
PRE_NORM_SUBMODULES = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


def is_memory_parameter_name(name: str) -> bool:
    return f"{MEMORY_ADAPTER_MODULE_NAME}." in name or f"{MEMORY_BANKS_MODULE_NAME}." in name


def build_memory_transformer_config(
    base_config, adapter_config: MemoryAdapterConfig, target_layers: list[int]
) -> MemoryTransformerConfig:
    """A `MemoryTransformerConfig` with the base model's widths and the adapter's memory settings."""
    return MemoryTransformerConfig(
        vocab_size=base_config.vocab_size,
        hidden_size=base_config.hidden_size,
        intermediate_size=base_config.intermediate_size,
        num_hidden_layers=base_config.num_hidden_layers,
        num_attention_heads=base_config.num_attention_heads,
        num_key_value_heads=getattr(base_config, "num_key_value_heads", None) or base_config.num_attention_heads,
        rms_norm_eps=base_config.rms_norm_eps,
        initializer_range=getattr(base_config, "initializer_range", 0.02),
        num_memory_tokens=adapter_config.num_memory_tokens,
        memory_bank_type=adapter_config.memory_bank_type,
        memory_rank=adapter_config.memory_rank,
        memory_init_std=adapter_config.memory_init_std,
        memory_num_attention_heads=adapter_config.memory_num_attention_heads,
        memory_layer_placement="custom",
        memory_layer_indices=target_layers,
        memory_sharing=adapter_config.memory_sharing,
        memory_sharing_k=adapter_config.memory_sharing_k,
        use_chapters=adapter_config.use_chapters,
        num_chapters=adapter_config.num_chapters,
        top_k_chapters=adapter_config.top_k_chapters,
        num_shared_chapters=adapter_config.num_shared_chapters,
        routing_chunk_size=adapter_config.routing_chunk_size,
        router_aux_loss_coef=adapter_config.router_aux_loss_coef,
        router_z_loss_coef=adapter_config.router_z_loss_coef,
    )


class MemoryForwardContext:
    """Per-forward state shared by the memory sublayers of one model.

    A forward pre-hook on the base model records the 2-D padding mask (routing must ignore padding) and clears the
    router logits that the memory sublayers collect for the router losses.
    """

    def __init__(self):
        self.attention_mask: Optional[torch.Tensor] = None
        self.router_logits: list[torch.Tensor] = []
        self._token_mask: Optional[tuple[int, Optional[torch.Tensor]]] = None

    def start_forward(self, module, args, kwargs) -> None:
        mask = kwargs.get("attention_mask")
        self.attention_mask = mask if mask is not None and mask.dim() == 2 else None
        self._token_mask = None
        self.router_logits = []

    def token_mask(self, seq_len: int) -> Optional[torch.Tensor]:
        """The new tokens' padding mask, `None` when none is padding; formed once per forward, not in every memory
        layer."""
        if self._token_mask is None or self._token_mask[0] != seq_len:
            self._token_mask = (seq_len, padding_mask(self.attention_mask, seq_len))
        return self._token_mask[1]

    def router_loss(self, memory_config: MemoryTransformerConfig) -> Optional[torch.Tensor]:
        """`aux_coef * load_balance + z_coef * z_loss` over the memory layers of the last forward (None: no chapters)."""
        if not self.router_logits:
            return None
        statistics = memory_router_statistics(
            tuple(self.router_logits), memory_config.top_k_chapters, self.token_mask(self.router_logits[0].shape[1])
        )
        return (
            memory_config.router_aux_loss_coef * statistics["load_balance_loss"]
            + memory_config.router_z_loss_coef * statistics["z_loss"]
        )


class MemoryAdapterLayer(nn.Module):
    """The memory sublayer of one decoder layer: a `MemoryTransformerMemoryBlock` reading a (possibly shared) bank.

    The bank is registered once, in `<decoder>.memory_banks`, and only referenced here, so a shared bank is stored and
    saved once.
    """

    def __init__(
        self,
        memory_config: MemoryTransformerConfig,
        layer_idx: int,
        placement: str,
        memory_bank: MemoryTransformerMemoryBank,
        context: MemoryForwardContext,
    ):
        super().__init__()
        self.memory_block = MemoryTransformerMemoryBlock(memory_config, layer_idx)
        self.placement = placement
        self.enabled = True
        object.__setattr__(self, "memory_bank", memory_bank)
        object.__setattr__(self, "context", context)

    def forward(self, hidden_states: torch.Tensor, cache=None) -> torch.Tensor:
        memory_cache = None
        if cache is not None:
            memory_cache = getattr(cache, "memory_cache", None)
            if memory_cache is None:
                memory_cache = cache.memory_cache = MemoryCache()
        # only chapter routing reads padding
        token_mask = self.context.token_mask(hidden_states.shape[1]) if self.memory_block.router is not None else None
        delta, router_logits = self.memory_block(hidden_states, self.memory_bank, token_mask, memory_cache)
        if router_logits is not None:
            self.context.router_logits.append(router_logits)
        return hidden_states + delta

    @property
    def is_quantized(self) -> bool:
        return not any(True for _ in self.memory_bank.parameters())

    def contributes(self) -> bool:
        """False while the output projection is zero: the sublayer is then an exact no-op."""
        return bool(self.memory_block.memory_output.weight.any())


class MemoryDecoderLayerMixin:
    """Adds the memory sublayer to a decoder layer: after self-attention (as MemoryTransformer's variant A) or after
    the whole layer. With the adapter disabled the layer runs its original forward."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        memory = getattr(self, MEMORY_ADAPTER_MODULE_NAME)
        if not memory.enabled:
            return super().forward(hidden_states, *args, **kwargs)
        if memory.placement == "after_mlp":
            outputs = super().forward(hidden_states, *args, **kwargs)
            if isinstance(outputs, tuple):
                return (memory(outputs[0], kwargs.get("cache")),) + outputs[1:]
            return memory(outputs, kwargs.get("cache"))
        if args:
            raise ValueError(
                f"{type(self).__name__} was called with positional arguments after hidden_states; the "
                "'after_attention' memory placement needs keyword arguments (use memory_placement='after_mlp')."
            )
        residual = hidden_states
        hidden_states, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
        hidden_states = memory(residual + hidden_states, kwargs.get("cache"))
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


_MEMORY_LAYER_CLASSES: dict[type, type] = {}


def memory_decoder_layer_class(layer_class: type) -> type:
    if layer_class not in _MEMORY_LAYER_CLASSES:
        _MEMORY_LAYER_CLASSES[layer_class] = type(
            f"Memory{layer_class.__name__}", (MemoryDecoderLayerMixin, layer_class), {"_original_class": layer_class}
        )
    return _MEMORY_LAYER_CLASSES[layer_class]


def build_memory_banks(memory_config: MemoryTransformerConfig) -> nn.ModuleDict:
    return nn.ModuleDict({str(index): build_memory_bank(memory_config) for index in range(memory_config.num_memory_banks)})


def inject_memory_layer(layer: nn.Module, memory_layer: MemoryAdapterLayer) -> None:
    if memory_layer.placement == "after_attention":
        missing = [name for name in PRE_NORM_SUBMODULES if not hasattr(layer, name)]
        if missing:
            raise ValueError(
                f"memory_placement='after_attention' needs a pre-norm decoder layer with {PRE_NORM_SUBMODULES}; "
                f"{type(layer).__name__} lacks {missing}. Use memory_placement='after_mlp'."
            )
    layer.add_module(MEMORY_ADAPTER_MODULE_NAME, memory_layer)
    layer.__class__ = memory_decoder_layer_class(type(layer))


def remove_memory_layer(layer: nn.Module) -> None:
    layer.__class__ = layer._original_class
    delattr(layer, MEMORY_ADAPTER_MODULE_NAME)


def memory_adapter_layers(model: nn.Module):
    return (module for module in model.modules() if isinstance(module, MemoryAdapterLayer))

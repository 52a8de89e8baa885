"""MemoryTransformer: Llama-style causal LM with learnable memory banks and causal chapter routing."""

from .configuration_memory_transformer import MemoryTransformerConfig
from .modeling_memory_transformer import (
    MemoryCache,
    MemoryRoutingState,
    MemoryTransformerCache,
    MemoryTransformerChapterRouter,
    MemoryTransformerForCausalLM,
    MemoryTransformerForSequenceClassification,
    MemoryTransformerForTokenClassification,
    MemoryTransformerMemoryBank,
    MemoryTransformerMemoryBlock,
    MemoryTransformerModel,
    MemoryTransformerPreTrainedModel,
    build_memory_bank,
    memory_router_statistics,
)

__all__ = [
    "MemoryCache",
    "MemoryRoutingState",
    "MemoryTransformerCache",
    "MemoryTransformerChapterRouter",
    "MemoryTransformerConfig",
    "MemoryTransformerForCausalLM",
    "MemoryTransformerForSequenceClassification",
    "MemoryTransformerForTokenClassification",
    "MemoryTransformerMemoryBank",
    "MemoryTransformerMemoryBlock",
    "MemoryTransformerModel",
    "MemoryTransformerPreTrainedModel",
    "build_memory_bank",
    "memory_router_statistics",
]

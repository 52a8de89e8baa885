"""PEFT-style memory adapters for pretrained causal LMs (Llama, Qwen2, Mistral, ...)."""

from .config import MemoryAdapterConfig
from .model import MemoryAdapterModel, create_memory_optimizer, find_decoder_layers, get_memory_model


__all__ = [
    "MemoryAdapterConfig",
    "MemoryAdapterModel",
    "create_memory_optimizer",
    "find_decoder_layers",
    "get_memory_model",
]

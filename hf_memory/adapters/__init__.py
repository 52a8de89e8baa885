"""PEFT-style memory adapters for pretrained causal LMs (Llama, Qwen2, Mistral, ...)."""

from .config import MemoryAdapterConfig
from .model import MemoryAdapterModel, create_memory_optimizer, find_decoder_layers, get_memory_model
from .peft_loading import register_peft_loading_error


register_peft_loading_error()


def __getattr__(name: str):
    """`MemoryAdapterTrainer` is imported on first use: importing transformers' Trainer costs half a second."""
    if name == "MemoryAdapterTrainer":
        from .trainer import MemoryAdapterTrainer

        return MemoryAdapterTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MemoryAdapterConfig",
    "MemoryAdapterModel",
    "MemoryAdapterTrainer",
    "create_memory_optimizer",
    "find_decoder_layers",
    "get_memory_model",
]

"""`run_clm.py --memory_adapter ... [--lora_r ...]`: build the adapter from the command-line flags."""

import json
import os
from dataclasses import fields

from .config import MemoryAdapterConfig
from .model import MemoryAdapterModel, get_memory_model


def parse_adapter_overrides(overrides: str) -> dict:
    """'num_memory_tokens=256,use_chapters=true,target_layers=[0,2]' -> typed values (JSON syntax per value)."""
    known = {spec.name for spec in fields(MemoryAdapterConfig)}
    values = {}
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        key, separator, raw = item.partition("=")
        if not separator or key not in known:
            raise ValueError(
                f"--memory_adapter_overrides: {item!r} is not 'field=value' with a MemoryAdapterConfig field "
                f"({sorted(known)})."
            )
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def load_adapter_config(memory_adapter: str) -> MemoryAdapterConfig:
    if memory_adapter == "default":
        return MemoryAdapterConfig()
    if os.path.isfile(memory_adapter):
        return MemoryAdapterConfig.from_json_file(memory_adapter)
    return MemoryAdapterConfig.from_pretrained(memory_adapter)


def build_memory_adapter_model(model, model_args, memory_args) -> MemoryAdapterModel:
    if memory_args.memory_adapter is None:
        raise ValueError("--lora_r needs --memory_adapter (LoRA is trained together with a memory adapter).")
    if not model_args.model_name_or_path:
        raise ValueError("--memory_adapter adapts a pretrained model: pass --model_name_or_path.")
    adapter_config = load_adapter_config(memory_args.memory_adapter)
    for key, value in parse_adapter_overrides(memory_args.memory_adapter_overrides or "").items():
        setattr(adapter_config, key, value)
    adapter_config = MemoryAdapterConfig(
        **{**adapter_config.to_dict(), "base_model_name_or_path": model_args.model_name_or_path, "inference_mode": False}
    )
    lora_config = None
    if memory_args.lora_r is not None:
        from peft import LoraConfig

        lora_config = LoraConfig(
            r=memory_args.lora_r,
            lora_alpha=memory_args.lora_alpha,
            lora_dropout=memory_args.lora_dropout,
            target_modules=[name.strip() for name in memory_args.lora_target_modules.split(",") if name.strip()],
        )
    adapted = get_memory_model(model, adapter_config, lora_config=lora_config)
    adapted.print_trainable_parameters()
    return adapted

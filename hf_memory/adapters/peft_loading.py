"""A clear error, instead of PEFT's bare `KeyError: 'MEMORY_ADAPTER'`, when PEFT is asked to load a memory adapter.

Memory adapter folders look like PEFT adapters (`adapter_config.json`), so users reach for `PeftModel.from_pretrained`,
`AutoPeftModelForCausalLM`, `model.load_adapter(...)` or `AutoModelForCausalLM.from_pretrained(adapter_dir)`. All of
them look the folder's `peft_type` up in `peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING` (the table PEFT's own
`register_peft_method` fills for third-party methods). Our type cannot be registered as a real PEFT method (its enum is
closed, and a registered method could not share a model with LoRA), so once `hf_memory` is imported the table holds
a stand-in that names the loader to use.
"""

from .config import MEMORY_ADAPTER_TYPE, MemoryAdapterConfig


def memory_adapter_loading_error(location: str | None, base_model_name_or_path: str | None) -> ValueError:
    subject = f"The adapter {location!r}" if location else "This adapter"
    adapter = repr(location) if location else "adapter_dir"
    base = repr(base_model_name_or_path) if base_model_name_or_path else "<base model id>"
    return ValueError(
        f"{subject} has peft_type={MEMORY_ADAPTER_TYPE!r}: it is an hf_memory memory "
        "adapter, which PEFT and transformers' adapter loading cannot load. Fix: load the base model, then the "
        "adapter with hf_memory:\n"
        "    from hf_memory import MemoryAdapterModel\n"
        f"    base = AutoModelForCausalLM.from_pretrained({base})\n"
        f"    model = MemoryAdapterModel.from_pretrained(base, {adapter})"
    )


class MemoryAdapterPeftConfigStandIn:
    """What PEFT's loaders find for `peft_type="MEMORY_ADAPTER"`: building it raises the error naming the fix."""

    def __init__(self, **config_fields):
        raise memory_adapter_loading_error(None, config_fields.get("base_model_name_or_path"))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            base_model = MemoryAdapterConfig.from_pretrained(pretrained_model_name_or_path).base_model_name_or_path
        except (OSError, ValueError, KeyError):  # the base model's name only completes the message
            base_model = None
        raise memory_adapter_loading_error(str(pretrained_model_name_or_path), base_model)


def register_peft_loading_error() -> None:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    PEFT_TYPE_TO_CONFIG_MAPPING.setdefault(MEMORY_ADAPTER_TYPE, MemoryAdapterPeftConfigStandIn)

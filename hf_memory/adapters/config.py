"""`MemoryAdapterConfig`: a PEFT-style configuration for learnable memory injected into a pretrained decoder."""

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Literal, Optional, Union

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HFValidationError
from transformers.utils import PushToHubMixin


ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
MEMORY_ADAPTER_TYPE = "MEMORY_ADAPTER"

BANK_TYPES = ("standard", "factorized", "reduced_dim")
SHARING_MODES = ("shared", "per_layer", "every_k_layers")
PLACEMENTS = ("after_attention", "after_mlp")


def is_positive_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class MemoryAdapterConfig(PushToHubMixin):
    """
    Configuration of a [`MemoryAdapterModel`]: a learnable memory bank read through a memory cross-attention sublayer
    added to chosen decoder layers of a frozen causal LM (Llama, Qwen2, Mistral and other pre-norm decoders).

    The layout follows PEFT's adapter configs (`peft_type`, `base_model_name_or_path`, `inference_mode`, saved as
    `adapter_config.json`), but the type is our own: PEFT cannot load it, [`MemoryAdapterModel.from_pretrained`] does
    (PEFT's loaders say so, see `peft_loading.py`).
    The memory's output projection starts at zero, so a fresh adapter leaves the base model's outputs unchanged.

    Args:
        target_layers (`list[int]`, *optional*):
            Indices of the decoder layers that receive memory (negative indices count from the end). `None` means all.
        num_memory_tokens (`int`, defaults to 256):
            Rows of each memory bank.
        memory_bank_type (`str`, defaults to `"standard"`):
            `"standard"` (a full `num_memory_tokens x hidden_size` matrix), `"factorized"` (`A B^T` of rank
            `memory_rank`) or `"reduced_dim"` (rows of size `memory_rank`, attention runs in that width).
        memory_rank (`int`, defaults to 64):
            Rank of the factorized bank or width of the reduced-dimension bank.
        memory_sharing (`str`, defaults to `"shared"`):
            `"shared"`: one bank for all target layers; `"per_layer"`: one bank each; `"every_k_layers"`: target layer
            `i` (in order) uses bank `i // memory_sharing_k`.
        memory_sharing_k (`int`, defaults to 2):
            Group size for `"every_k_layers"`.
        memory_placement (`str`, defaults to `"after_attention"`):
            Where the memory sublayer sits in the decoder layer: `"after_attention"` (self-attention, memory, MLP) or
            `"after_mlp"` (after the whole layer).
        memory_num_attention_heads (`int`, *optional*):
            Heads of the memory cross-attention; `None` uses the base model's attention heads.
        use_chapters (`bool`, defaults to `False`):
            Split the bank into `num_chapters` chapters and let a causal router pick `top_k_chapters` of them.
        num_chapters (`int`, defaults to 8), top_k_chapters (`int`, defaults to 2), num_shared_chapters (`int`,
        defaults to 0), routing_chunk_size (`int`, defaults to 64):
            Chapter routing, as in `MemoryTransformerConfig`: `num_memory_tokens` must be divisible by `num_chapters`;
            the router decides every `routing_chunk_size` tokens from the mean of the past, never from the future.
        router_aux_loss_coef (`float`, defaults to 0.01), router_z_loss_coef (`float`, defaults to 0.001):
            Weights of the router losses added to the language-modelling loss during training.
        memory_init_std (`float`, defaults to 0.02):
            Standard deviation of the bank initialisation.
        inference_mode (`bool`, defaults to `False`):
            Load the adapter frozen (no trainable parameters).
        lora_config (`dict`, *optional*):
            A PEFT `LoraConfig` as a dict, set when LoRA is trained together with the memory (one save, one load).
    """

    peft_type: str = field(default=MEMORY_ADAPTER_TYPE, metadata={"help": "Adapter type, always MEMORY_ADAPTER."})
    task_type: str = field(default="CAUSAL_LM", metadata={"help": "Task of the adapted model."})
    base_model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Base model the adapter is for."})
    revision: Optional[str] = field(default=None, metadata={"help": "Revision of the base model."})
    inference_mode: bool = field(default=False, metadata={"help": "Whether the adapter is loaded frozen."})
    target_layers: Optional[list[int]] = field(
        default=None, metadata={"help": "Decoder layer indices that receive memory; None means all layers."}
    )
    num_memory_tokens: int = field(default=256, metadata={"help": "Rows of each memory bank."})
    memory_bank_type: Literal["standard", "factorized", "reduced_dim"] = field(
        default="standard", metadata={"help": f"One of {BANK_TYPES}."}
    )
    memory_rank: int = field(default=64, metadata={"help": "Rank of a factorized or reduced_dim bank."})
    memory_sharing: Literal["shared", "per_layer", "every_k_layers"] = field(
        default="shared", metadata={"help": f"One of {SHARING_MODES}."}
    )
    memory_sharing_k: int = field(default=2, metadata={"help": "Group size for every_k_layers sharing."})
    memory_placement: Literal["after_attention", "after_mlp"] = field(
        default="after_attention", metadata={"help": f"One of {PLACEMENTS}."}
    )
    memory_num_attention_heads: Optional[int] = field(
        default=None, metadata={"help": "Memory attention heads; None uses the base model's."}
    )
    use_chapters: bool = field(default=False, metadata={"help": "Route each token to a few chapters of the bank."})
    num_chapters: int = field(default=8, metadata={"help": "Chapters the bank is split into."})
    top_k_chapters: int = field(default=2, metadata={"help": "Routed chapters each routing chunk reads."})
    num_shared_chapters: int = field(default=0, metadata={"help": "Leading chapters that are always read."})
    routing_chunk_size: int = field(default=64, metadata={"help": "Tokens per routing decision (causal prefix)."})
    router_aux_loss_coef: float = field(default=0.01, metadata={"help": "Weight of the load-balance loss."})
    router_z_loss_coef: float = field(default=0.001, metadata={"help": "Weight of the router z-loss."})
    memory_init_std: float = field(default=0.02, metadata={"help": "Std of the bank initialisation."})
    lora_config: Optional[dict] = field(
        default=None, metadata={"help": "PEFT LoraConfig (as a dict) trained together with the memory."}
    )

    def __post_init__(self):
        if self.peft_type != MEMORY_ADAPTER_TYPE:
            raise ValueError(
                f"peft_type={self.peft_type!r}: this config describes a memory adapter; use "
                f"{MEMORY_ADAPTER_TYPE!r} (PEFT's own adapters load with peft.PeftConfig)."
            )
        self._check_choice("memory_bank_type", BANK_TYPES)
        self._check_choice("memory_sharing", SHARING_MODES)
        self._check_choice("memory_placement", PLACEMENTS)
        for name in (
            "num_memory_tokens",
            "memory_rank",
            "memory_sharing_k",
            "num_chapters",
            "top_k_chapters",
            "routing_chunk_size",
        ):
            if not is_positive_integer(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer.")
        if self.memory_num_attention_heads is not None and not is_positive_integer(self.memory_num_attention_heads):
            raise ValueError(
                f"memory_num_attention_heads={self.memory_num_attention_heads} must be positive, or None for the "
                "base model's."
            )
        if self.use_chapters:
            if not 0 <= self.num_shared_chapters < self.num_chapters:
                raise ValueError(
                    f"num_shared_chapters={self.num_shared_chapters} must be in [0, num_chapters={self.num_chapters})."
                )
            if self.top_k_chapters > self.num_chapters - self.num_shared_chapters:
                raise ValueError(
                    f"top_k_chapters={self.top_k_chapters} exceeds the {self.num_chapters - self.num_shared_chapters} "
                    "routed chapters (num_chapters - num_shared_chapters); lower it."
                )
            if self.num_memory_tokens % self.num_chapters:
                raise ValueError(
                    f"num_memory_tokens={self.num_memory_tokens} is not divisible by num_chapters="
                    f"{self.num_chapters}; choose sizes so that every chapter has the same number of tokens."
                )
        if self.target_layers is not None:
            if not self.target_layers or len(set(self.target_layers)) != len(self.target_layers):
                raise ValueError(
                    f"target_layers={self.target_layers} must be a non-empty list of distinct layer indices, or None "
                    "for all layers."
                )
            self.target_layers = [int(index) for index in self.target_layers]
        for name in ("router_aux_loss_coef", "router_z_loss_coef", "memory_init_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            raise ValueError(f"{name}={getattr(self, name)!r} is not supported; choose one of {choices}.")

    def resolve_target_layers(self, num_layers: int) -> list[int]:
        """Sorted, non-negative indices of the layers that receive memory in a decoder of `num_layers` layers."""
        if self.target_layers is None:
            return list(range(num_layers))
        out_of_range = [index for index in self.target_layers if not -num_layers <= index < num_layers]
        if out_of_range:
            raise ValueError(
                f"target_layers {out_of_range} are outside a decoder of {num_layers} layers; use indices in "
                f"[{-num_layers}, {num_layers - 1}]."
            )
        resolved = sorted(index % num_layers for index in self.target_layers)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"target_layers={self.target_layers} name the same layer twice.")
        return resolved

    def to_dict(self) -> dict:
        return asdict(self)

    def save_pretrained(self, save_directory: Union[str, os.PathLike], **kwargs) -> None:
        """Writes `adapter_config.json` into `save_directory`."""
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory={save_directory!r} is a file; pass a directory.")
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, ADAPTER_CONFIG_NAME), "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], subfolder=None, **kwargs):
        """Loads `adapter_config.json` from a local directory or a Hub repository (`kwargs` go to `hf_hub_download`)."""
        directory = os.path.join(pretrained_model_name_or_path, subfolder or "")
        config_file = os.path.join(directory, ADAPTER_CONFIG_NAME)
        if os.path.isdir(directory) and not os.path.isfile(config_file):
            fix = "Fix: pass the folder that model.save_pretrained(dir) wrote."
            if os.path.isfile(os.path.join(directory, "model.safetensors")):
                fix = (
                    "Its model.safetensors is the whole model's state dict, which a stock transformers Trainer writes "
                    "for a model that is not a PreTrainedModel. Fix: train with hf_memory.MemoryAdapterTrainer, whose "
                    "checkpoints and save_model() are adapter folders, or call model.save_pretrained(dir)."
                )
            raise ValueError(f"{directory} has no {ADAPTER_CONFIG_NAME}, so it is not a memory adapter folder. {fix}")
        if not os.path.isfile(config_file):
            try:
                config_file = hf_hub_download(
                    str(pretrained_model_name_or_path), ADAPTER_CONFIG_NAME, subfolder=subfolder, **kwargs
                )
            except HFValidationError:
                raise ValueError(
                    f"{str(pretrained_model_name_or_path)!r} is neither a local folder nor a Hub repository id. Fix: "
                    "pass the folder that model.save_pretrained(dir) wrote, or a repository id like 'user/adapter'."
                ) from None
        return cls.from_json_file(config_file)

    @classmethod
    def from_json_file(cls, path_json_file: Union[str, os.PathLike]) -> "MemoryAdapterConfig":
        with open(path_json_file, encoding="utf-8") as handle:
            values = json.load(handle)
        if values.get("peft_type") != MEMORY_ADAPTER_TYPE:
            raise ValueError(
                f"{path_json_file} has peft_type={values.get('peft_type')!r}, not {MEMORY_ADAPTER_TYPE!r}: it is not a "
                "memory adapter (load PEFT adapters with peft.PeftModel.from_pretrained)."
            )
        values.pop("peft_version", None)  # PEFT's bookkeeping, which PEFT tools add to adapter configs
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{path_json_file} has unknown fields {unknown}; it was written by a newer hf_memory, upgrade it."
            )
        return cls(**values)

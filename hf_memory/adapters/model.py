"""`MemoryAdapterModel`: injects memory cross-attention into the decoder layers of a pretrained causal LM.

The memory is injected in place, as plain modules of the base model (`<decoder>.memory_banks` and
`<decoder>.layers.<i>.memory_adapter`), so the base model's own parameter names, output hooks, gradient
checkpointing and `generate()` keep working. This wrapper adds the PEFT-style API around it: freezing, saving only
the adapter, reloading, disabling, unloading and optional PEFT LoRA trained and saved together with the memory.
"""

import functools
import os
import warnings
from contextlib import contextmanager
from typing import Optional, Union

import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import PushToHubMixin

from ..model_cards import ModelCardMixin, write_model_card
from ..models.memory_transformer.modeling_memory_transformer import MemoryTransformerCache
from .config import ADAPTER_WEIGHTS_NAME, MemoryAdapterConfig
from .layer import (
    MEMORY_ADAPTER_MODULE_NAME,
    MEMORY_BANKS_MODULE_NAME,
    MemoryAdapterLayer,
    MemoryForwardContext,
    build_memory_banks,
    build_memory_transformer_config,
    inject_memory_layer,
    is_memory_parameter_name,
    memory_adapter_layers,
    remove_memory_layer,
)


LORA_PARAMETER_MARKER = "lora_"
LORA_ADAPTER_NAME = "default"


def find_decoder_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """Finds the decoder and its stack of decoder layers from the model's structure.

    The stack is the `nn.ModuleList` directly under `model.get_decoder()` (or under the model itself) that holds
    `config.num_hidden_layers` modules of one class: `LlamaModel.layers`, `Qwen2Model.layers`, `MistralModel.layers`
    and the same layout in other decoders, whatever their `model_type` is called.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for owner in (decoder, model):
        for child in owner.children():
            if (
                isinstance(child, nn.ModuleList)
                and len(child) > 0
                and (num_layers is None or len(child) == num_layers)
                and len({getattr(type(layer), "_original_class", type(layer)) for layer in child}) == 1
            ):
                return owner, child
    raise ValueError(
        f"Could not find the decoder layers of {type(model).__name__}: expected an nn.ModuleList of "
        f"config.num_hidden_layers={num_layers} identical layers under model.get_decoder(). Memory adapters support "
        "decoder-only causal LMs such as LlamaForCausalLM, Qwen2ForCausalLM and MistralForCausalLM."
    )


class MemoryAdapterModel(ModelCardMixin, nn.Module, PushToHubMixin):
    """
    A pretrained causal LM with memory cross-attention injected into its decoder layers (see [`MemoryAdapterConfig`]).

    Create it with [`get_memory_model`] or load a saved adapter with [`MemoryAdapterModel.from_pretrained`]. Calls
    (`forward`, `generate`, attribute access) go to the base model; in training mode the router losses of chapter
    routing are added to the loss.

    Args:
        model (`PreTrainedModel`): the base causal LM, modified in place.
        peft_config (`MemoryAdapterConfig`): the adapter configuration.
        lora_config (`peft.LoraConfig`, *optional*): LoRA trained and saved together with the memory.
    """

    def __init__(self, model: nn.Module, peft_config: MemoryAdapterConfig, lora_config=None):
        super().__init__()
        if getattr(model, "_memory_adapter_injected", False):
            raise ValueError("This model already holds a memory adapter; call unload() on its MemoryAdapterModel first.")
        self.base_model = model
        self.peft_config = peft_config
        if peft_config.base_model_name_or_path is None:
            peft_config.base_model_name_or_path = getattr(model, "name_or_path", None) or None
        self._lora_model = None
        self._inject_memory()
        if lora_config is not None or peft_config.lora_config is not None:
            self._inject_lora(lora_config)
        self._set_trainable(not peft_config.inference_mode)
        self.train(model.training)
        # expose the base model's forward signature (the Trainer keeps only dataset columns that forward accepts)
        self.forward = functools.update_wrapper(functools.partial(type(self).forward, self), model.forward)

    def _inject_memory(self) -> None:
        decoder, layers = find_decoder_layers(self.base_model)
        target_layers = self.peft_config.resolve_target_layers(len(layers))
        self.memory_config = build_memory_transformer_config(self.base_model.config, self.peft_config, target_layers)
        reference = next(self.base_model.parameters())
        banks = build_memory_banks(self.memory_config).to(device=reference.device, dtype=reference.dtype)
        decoder.add_module(MEMORY_BANKS_MODULE_NAME, banks)
        self._context = MemoryForwardContext()
        for index in target_layers:
            bank = banks[str(self.memory_config.get_memory_bank_index(index))]
            memory_layer = MemoryAdapterLayer(
                self.memory_config, index, self.peft_config.memory_placement, bank, self._context
            ).to(device=reference.device, dtype=reference.dtype)
            inject_memory_layer(layers[index], memory_layer)
        self._context_hook = self.base_model.register_forward_pre_hook(self._context.start_forward, with_kwargs=True)
        # plain attributes, not sub-modules: the decoder already belongs to base_model
        object.__setattr__(self, "_decoder", decoder)
        self._target_layers = target_layers
        self.base_model._memory_adapter_injected = True

    def _inject_lora(self, lora_config) -> None:
        from peft import LoraConfig, LoraModel

        if lora_config is None:
            lora_config = LoraConfig(**self.peft_config.lora_config)
        if lora_config.exclude_modules is None:
            # memory sublayers have their own q/k/v/o projections: keep LoRA on the base model's layers only
            lora_config.exclude_modules = rf".*\.({MEMORY_ADAPTER_MODULE_NAME}|{MEMORY_BANKS_MODULE_NAME})\..*"
        lora_config.inference_mode = self.peft_config.inference_mode
        # a plain attribute, not a sub-module: the tuner wraps base_model, whose weights are registered already
        object.__setattr__(self, "_lora_model", LoraModel(self.base_model, lora_config, LORA_ADAPTER_NAME))
        self.peft_config.lora_config = {
            key: sorted(value) if isinstance(value, set) else value
            for key, value in lora_config.to_dict().items()
            if key not in ("peft_version",)
        }

    def _set_trainable(self, trainable: bool) -> None:
        for name, parameter in self.base_model.named_parameters():
            parameter.requires_grad_(trainable and (is_memory_parameter_name(name) or LORA_PARAMETER_MARKER in name))

    def get_base_model(self) -> nn.Module:
        return self.base_model

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def forward(self, *args, labels=None, return_dict: Optional[bool] = None, **kwargs):
        """`labels` is named so that the Trainer (which reads the class signature) computes eval losses. The router
        losses join the training loss before a `return_dict=False` tuple is formed."""
        outputs = self.base_model(*args, labels=labels, return_dict=True, **kwargs)
        if self.training and outputs.get("loss") is not None:
            router_loss = self.router_loss()
            if router_loss is not None:
                outputs.loss = outputs.loss + router_loss
        if return_dict is None:
            return_dict = getattr(self.base_model.config, "return_dict", True)
        return outputs if return_dict else outputs.to_tuple()

    def generate(self, *args, **kwargs):
        """`base_model.generate` with a cache that also holds the memory keys/values and routing state, projected once
        per generation and reordered with the KV cache by beam search. Without chapters there is no routing state,
        so `cache_implementation` (static, quantized, ...) may pick another cache."""
        if kwargs.get("cache_implementation") is not None:
            if self.memory_config.use_chapters:
                raise ValueError(
                    f"cache_implementation={kwargs['cache_implementation']!r}: a memory adapter with chapters keeps its "
                    "routing state in a MemoryTransformerCache, which follows beam reordering. Fix: drop "
                    "cache_implementation (or use an adapter without chapters)."
                )
        elif kwargs.get("cache") is None and kwargs.get("use_cache", True):
            kwargs["cache"] = MemoryTransformerCache(config=self.base_model.config)
        return self.base_model.generate(*args, **kwargs)

    def router_loss(self) -> Optional[torch.Tensor]:
        """Weighted router losses of the last forward over all memory layers (`None` without chapters)."""
        return self._context.router_loss(self.memory_config)

    def memory_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.base_model.named_parameters() if is_memory_parameter_name(name)]

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.base_model.named_parameters() if LORA_PARAMETER_MARKER in name]

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.base_model.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.base_model.parameters())

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def get_optimizer_param_groups(
        self, memory_learning_rate: float, lora_learning_rate: Optional[float] = None, weight_decay: float = 0.0
    ) -> list[dict]:
        """Parameter groups with separate learning rates for the memory and for LoRA (trainable parameters only).

        Banks get no weight decay (decay would pull the learned memory towards zero); projections and LoRA do.
        """
        groups = {"memory_bank": [], "memory": [], "lora": []}
        for name, parameter in self.base_model.named_parameters():
            if not parameter.requires_grad:
                continue
            if f"{MEMORY_BANKS_MODULE_NAME}." in name:
                groups["memory_bank"].append(parameter)
            elif is_memory_parameter_name(name):
                groups["memory"].append(parameter)
            elif LORA_PARAMETER_MARKER in name:
                groups["lora"].append(parameter)
        if groups["lora"] and lora_learning_rate is None:
            raise ValueError("The model has trainable LoRA parameters: pass lora_learning_rate as well.")
        settings = {
            "memory_bank": (memory_learning_rate, 0.0),
            "memory": (memory_learning_rate, weight_decay),
            "lora": (lora_learning_rate, weight_decay),
        }
        return [
            {"params": params, "lr": settings[name][0], "weight_decay": settings[name][1], "name": name}
            for name, params in groups.items()
            if params
        ]

    @contextmanager
    def disable_adapter(self):
        """Runs the exact base model inside the block: memory sublayers and LoRA are bypassed."""
        layers = list(memory_adapter_layers(self.base_model))
        for layer in layers:
            layer.enabled = False
        if self._lora_model is not None:
            self._lora_model.disable_adapter_layers()
        try:
            yield
        finally:
            for layer in layers:
                layer.enabled = True
            if self._lora_model is not None:
                self._lora_model.enable_adapter_layers()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Memory (and LoRA) weights only, keyed by their names in the base model."""
        state = {}
        for name, tensor in self.base_model.state_dict().items():
            if is_memory_parameter_name(name) or LORA_PARAMETER_MARKER in name:
                state[name] = tensor.detach().contiguous()
        return state

    def _card_config(self):
        return self.peft_config

    def save_pretrained(self, save_directory: Union[str, os.PathLike], **kwargs) -> None:
        """Writes `adapter_config.json` and `adapter_model.safetensors` (never the base model's weights)."""
        if any(layer.is_quantized for layer in memory_adapter_layers(self.base_model)):
            raise ValueError(
                "The memory bank is quantized for inference; save the adapter before calling quantize_memory()."
            )
        os.makedirs(save_directory, exist_ok=True)
        self.peft_config.save_pretrained(save_directory)
        save_file(self.adapter_state_dict(), os.path.join(save_directory, ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
        write_model_card(save_directory, self._card_config())

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        adapter_name_or_path: Union[str, os.PathLike],
        is_trainable: bool = False,
        **hub_kwargs,
    ) -> "MemoryAdapterModel":
        """Injects the saved adapter into `model` and loads its weights (frozen unless `is_trainable=True`)."""
        config = MemoryAdapterConfig.from_pretrained(adapter_name_or_path, **hub_kwargs)
        config.inference_mode = not is_trainable
        weights_file = os.path.join(adapter_name_or_path, ADAPTER_WEIGHTS_NAME)
        if not os.path.isfile(weights_file):
            weights_file = hf_hub_download(str(adapter_name_or_path), ADAPTER_WEIGHTS_NAME, **hub_kwargs)
        adapted = cls(model, config)
        adapted.load_adapter_state_dict(load_file(weights_file))
        return adapted

    def load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        expected = set(self.adapter_state_dict())
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if missing or unexpected:
            raise ValueError(
                f"The adapter weights do not match this model (missing {missing[:4]}, unexpected {unexpected[:4]}); "
                "load them into the base model they were trained on."
            )
        self.base_model.load_state_dict(state_dict, strict=False)

    def quantize_memory(self, bits: int = 8) -> None:
        """Replaces every memory bank by an int8 or 4-bit copy with per-row scales (inference only)."""
        from .quantization import quantize_memory_banks

        quantize_memory_banks(getattr(self._decoder, MEMORY_BANKS_MODULE_NAME), memory_adapter_layers(self.base_model), bits)
        self.eval()

    def unload(self) -> nn.Module:
        """Removes the memory and LoRA without merging anything and returns the unchanged base model."""
        if self._lora_model is not None:
            self._lora_model.unload()
            self._lora_model = None
        self._remove_memory()
        return self.base_model

    def merge_and_unload(self, drop_memory: bool = False) -> nn.Module:
        """Returns a plain transformers model with LoRA merged into its weights, loadable without hf_memory.

        Memory cross-attention over a learned bank has no equivalent in a plain Llama/Qwen2/Mistral layer, so it cannot
        be merged. While every memory output projection is still zero (an untrained adapter) the memory is a no-op
        and is dropped exactly. A trained memory raises a ValueError unless `drop_memory=True`, which returns the base
        model (with merged LoRA) without the memory, with a warning that its outputs change.
        """
        active = [layer for layer in memory_adapter_layers(self.base_model) if layer.contributes()]
        if active and not drop_memory:
            raise ValueError(
                f"{len(active)} trained memory sublayers cannot be merged into plain {type(self.base_model).__name__} "
                "weights (memory cross-attention has no counterpart there). Ship the adapter with save_pretrained() "
                "and load it with MemoryAdapterModel.from_pretrained(), or pass drop_memory=True to export the base "
                "model (plus merged LoRA) without memory."
            )
        if active:
            warnings.warn("merge_and_unload(drop_memory=True): the exported model has no memory; its outputs differ.")
        if self._lora_model is not None:
            self._lora_model.merge_and_unload()
            self._lora_model = None
        self._remove_memory()
        return self.base_model

    def _remove_memory(self) -> None:
        _, layers = find_decoder_layers(self.base_model)
        for index in self._target_layers:
            remove_memory_layer(layers[index])
        delattr(self._decoder, MEMORY_BANKS_MODULE_NAME)
        self._context_hook.remove()
        self.base_model._memory_adapter_injected = False
        for parameter in self.base_model.parameters():
            parameter.requires_grad_(True)


def get_memory_model(model: nn.Module, peft_config: Optional[MemoryAdapterConfig] = None, lora_config=None):
    """Adds a memory adapter (and optionally PEFT LoRA) to a pretrained causal LM; only the adapter is trainable."""
    return MemoryAdapterModel(model, peft_config if peft_config is not None else MemoryAdapterConfig(), lora_config)


def create_memory_optimizer(
    model: MemoryAdapterModel,
    training_args,
    memory_learning_rate: Optional[float] = None,
    lora_learning_rate: Optional[float] = None,
) -> torch.optim.AdamW:
    """AdamW over the adapter's parameter groups, for `Trainer(..., optimizers=(optimizer, None))`.

    Learning rates default to `training_args.learning_rate`; betas, epsilon and weight decay come from the arguments.
    The Trainer's scheduler then scales every group by the same factor, so the ratio between the rates is kept.
    """
    groups = model.get_optimizer_param_groups(
        memory_learning_rate=memory_learning_rate or training_args.learning_rate,
        lora_learning_rate=lora_learning_rate or training_args.learning_rate,
        weight_decay=training_args.weight_decay,
    )
    return torch.optim.AdamW(
        groups, betas=(training_args.adam_beta1, training_args.adam_beta2), eps=training_args.adam_epsilon
    )

"""A `Trainer` whose checkpoints of a memory adapter are adapter folders.

The stock `Trainer` only calls `save_pretrained` for `PreTrainedModel`s and PEFT's own `PeftModel`; any other model,
`MemoryAdapterModel` included, is saved as its whole state dict (the frozen base model too) in `model.safetensors`,
without `adapter_config.json`, which `MemoryAdapterModel.from_pretrained` cannot load. This subclass saves
checkpoints, `save_model()` and the upload of `push_to_hub()` with `MemoryAdapterModel.save_pretrained` (kilobytes to
megabytes) and resumes from them (`resume_from_checkpoint`, `load_best_model_at_end`). Other models train as with
`Trainer`.
"""

import os
from typing import Optional

import torch
from safetensors.torch import load_file
from transformers import Trainer

from .config import ADAPTER_WEIGHTS_NAME
from .model import MemoryAdapterModel


class MemoryAdapterTrainer(Trainer):
    def _memory_adapter(self) -> Optional[MemoryAdapterModel]:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return model if isinstance(model, MemoryAdapterModel) else None

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        adapter = self._memory_adapter()
        if adapter is None:
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return None
        output_dir = output_dir or self.args.output_dir
        adapter.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        return None

    def _load_adapter_weights(self, checkpoint: str) -> bool:
        """Loads the adapter weights saved in `checkpoint`; False when the model is not a memory adapter."""
        adapter = self._memory_adapter()
        if adapter is None:
            return False
        weights_file = os.path.join(checkpoint, ADAPTER_WEIGHTS_NAME)
        if not os.path.isfile(weights_file):
            raise ValueError(
                f"{checkpoint} has no {ADAPTER_WEIGHTS_NAME}: it was not written by MemoryAdapterTrainer or "
                "MemoryAdapterModel.save_pretrained. Fix: resume from a checkpoint of this trainer."
            )
        adapter.load_adapter_state_dict(load_file(weights_file))
        return True

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._load_adapter_weights(resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if not self._load_adapter_weights(self.state.best_model_checkpoint):
            super()._load_best_model()

"""Inference-time quantisation of memory banks: int8 or 4-bit codes with one absmax scale per memory vector."""

from collections.abc import Iterable

import torch
from torch import nn


SUPPORTED_BITS = (8, 4)


class QuantizedMemoryBank(nn.Module):
    """A frozen copy of a memory bank stored as signed integer codes plus a per-row scale.

    4-bit codes are packed two per byte. A factorized bank is quantised as its materialised product, which costs
    `N x d` half-bytes/bytes instead of the `(N + d) r` floats of the factors; quantise standard or reduced_dim banks
    when the goal is a smaller file.
    """

    def __init__(self, memory: torch.Tensor, bits: int):
        super().__init__()
        if bits not in SUPPORTED_BITS:
            raise ValueError(f"bits={bits} is not supported; use one of {SUPPORTED_BITS}.")
        if bits == 4 and memory.shape[-1] % 2:
            raise ValueError(f"4-bit packing needs an even memory width, got {memory.shape[-1]}; use bits=8.")
        self.bits = bits
        self.memory_dtype = memory.dtype
        max_code = 2 ** (bits - 1) - 1
        memory = memory.detach().float()
        scales = memory.abs().amax(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / max_code
        codes = torch.round(memory / scales).clamp(-max_code, max_code).to(torch.int16)
        if bits == 4:
            codes = (codes[:, 0::2] & 0xF) | ((codes[:, 1::2] & 0xF) << 4)
        self.register_buffer("codes", codes.to(torch.uint8 if bits == 4 else torch.int8))
        self.register_buffer("scales", scales)

    def integer_codes(self) -> torch.Tensor:
        if self.bits == 8:
            return self.codes.to(torch.int16)
        packed = self.codes.to(torch.int16)
        low, high = ((packed & 0xF) ^ 8) - 8, ((packed >> 4) ^ 8) - 8
        return torch.stack([low, high], dim=-1).flatten(-2)

    def forward(self) -> torch.Tensor:
        return (self.integer_codes().float() * self.scales).to(self.memory_dtype)

    def storage_bytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()


def quantize_memory_banks(banks: nn.ModuleDict, memory_layers: Iterable[nn.Module], bits: int) -> None:
    """Replaces every bank of `banks` by its quantised copy and points the memory sublayers at the copies."""
    replacements = {}
    for key, bank in list(banks.items()):
        with torch.no_grad():
            quantized = QuantizedMemoryBank(bank(), bits).to(bank().device)
        replacements[id(bank)] = quantized
        banks[key] = quantized
    for layer in memory_layers:
        object.__setattr__(layer, "memory_bank", replacements[id(layer.memory_bank)])

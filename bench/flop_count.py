"""Matrix-multiply FLOPs of a call, printed next to a measured speed ratio: the ratio the pair would reach if time
followed FLOPs.

torch's `FlopCounterMode` counts matmuls and attention kernels; its registry lacks the CPU flash-attention kernels
that `scaled_dot_product_attention` dispatches to on CPU, so they are registered here with torch's own attention
formulas (grouped-query attention included). Elementwise work (norms, activations, softmax, gathers) is not counted.
Where matmuls dominate (forward passes and training at the benchmark sizes) the FLOP ratio bounds the speed ratio and
anything beyond it is overhead; batch-1 decoding reads each weight once per token, so there it approximates the
ratio of bytes read, and fixed per-token costs (generate's own work) can put the measured ratio on either side.
"""

import torch
from torch.utils import flop_counter

_aten = torch.ops.aten


def _register_cpu_attention_formulas() -> None:
    registry = flop_counter.flop_registry
    forward = _aten._scaled_dot_product_flash_attention_for_cpu
    backward = _aten._scaled_dot_product_flash_attention_for_cpu_backward
    if forward not in registry:

        @flop_counter.register_flop_formula(forward)
        def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    if backward not in registry:

        @flop_counter.register_flop_formula(backward)
        def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_register_cpu_attention_formulas()


def count_flops(function) -> int:
    """FLOPs of the matmuls and attention kernels that `function()` runs."""
    with flop_counter.FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()

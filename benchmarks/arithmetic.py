"""The arithmetic a call performs, so that a latency ratio splits into work left out and work done faster.

Counted by PyTorch's `FlopCounterMode` (matrix products, convolutions, attention: two operations per
multiply-add), over one untimed call. It has no formula for two kernels that CPU inference takes here:
oneDNN's linear (`modeling_pi/cpu_linears.py`) and the CPU's flash attention (sdpa's CPU kernel); they
are counted as the products they compute, so a count does not depend on which kernel ran. Dividing a
count by the call's median time gives the rate reached, to set beside the rates of single matrix
products on the same machine (`benchmarks/linear_kernels.py`). Elementwise work (norms, GELU, softmax)
is not counted.
"""

import math

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from modeling_pi.cpu_linears import has_onednn


def _linear_flop(x_shape, weight_shape, *args, **kwargs) -> int:
    return 2 * math.prod(x_shape[:-1]) * weight_shape[0] * weight_shape[1]


def _attention_flop(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _formulas() -> dict:
    formulas = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flop}
    if has_onednn():  # our operator, and oneDNN's own underneath it where it is called directly
        formulas[torch.ops.pi.onednn_linear] = formulas[torch.ops.mkldnn._linear_pointwise] = _linear_flop
    return formulas


def count_gflop(fn) -> float:
    """Billions of floating-point operations `fn()` performs (one call, eagerly: compiled code runs kernels
    the counter does not see)."""
    with FlopCounterMode(display=False, custom_mapping=_formulas()) as counter:
        fn()
    return counter.get_total_flops() / 1e9

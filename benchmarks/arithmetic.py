"""The arithmetic a call performs, so that a latency ratio splits into work left out and work done faster.

Counted by PyTorch's `FlopCounterMode` (matrix products, convolutions, attention: two operations per
multiply-add), over one untimed call. It has no formula for the CPU's flash attention (sdpa's CPU kernel),
which is counted here as the products it computes, so a count does not depend on which kernel ran.
Dividing a count by the call's median time gives the rate reached. Elementwise work (norms, GELU, softmax)
is not counted.
"""

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _attention_flop(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flop}


def count_gflop(fn) -> float:
    """Billions of floating-point operations `fn()` performs (one call, eagerly: compiled code runs kernels
    the counter does not see)."""
    with FlopCounterMode(display=False, custom_mapping=FORMULAS) as counter:
        fn()
    return counter.get_total_flops() / 1e9

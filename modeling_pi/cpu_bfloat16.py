"""bfloat16 inference on CPUs without bfloat16 arithmetic: linears computed as float32 products.

Where the CPU has neither bfloat16 instructions nor AVX-512 (on which oneDNN emulates them), PyTorch
runs a bfloat16 linear through a generic loop, several times slower than the same product in float32
(the README's bfloat16 rows were measured on such a CPU). Upcasting is exact, and so is the product of
two bfloat16 numbers in float32: computing the product in float32 and rounding the output once to
bfloat16 is the arithmetic bfloat16 hardware does, float32 accumulation included, up to the order of
the sums. Inputs, outputs, weights and the KV cache stay bfloat16.

`float32_products` decorates the generation entry points: for the call, every plain `nn.Linear` of the
model (SigLIP's, Gemma's and the projections' alike, and the base layers of LoRA-wrapped ones) computes
its products this way. The weight is upcast `UPCAST_SLICE` elements at a time, so no float32 copy of a
layer, let alone of the model, ever exists. Small weights, and products over fewer than `MIN_ROWS` rows
(a decoding step's matrix-vector products), keep the native kernel: there upcasting costs more than it
saves. Written here because the choice is the kernel library's, per product, and no PyTorch setting
makes it.
"""

import functools
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

UPCAST_SLICE = 1 << 22  # weight elements upcast at a time (16 MB in float32)
MIN_WEIGHT = 1 << 15  # weight elements: smaller linears keep the native bfloat16 kernel,
MIN_ROWS = 8  # as do products over fewer rows: there upcasting costs more than it saves


def lacks_bfloat16_arithmetic() -> bool:
    """True on CPUs where PyTorch's bfloat16 matrix products take the generic path: PyTorch's own (private)
    test of whether oneDNN runs them."""
    return not torch.ops.mkldnn._is_mkldnn_bf16_supported()


def linear_in_float32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for bfloat16 operands, computed in float32 a slice of output features at a
    time and rounded to bfloat16."""
    rows = max(1, UPCAST_SLICE // weight.shape[1])
    x32 = x.float()
    out = x.new_empty(*x.shape[:-1], weight.shape[0])
    for start in range(0, weight.shape[0], rows):
        features = slice(start, start + rows)
        part_bias = None if bias is None else bias[features].float()
        out[..., features] = F.linear(x32, weight[features].float(), part_bias)
    return out


def _large_bfloat16_on_cpu(weight: torch.Tensor) -> bool:
    return weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and weight.numel() >= MIN_WEIGHT


class _Float32Linear(nn.Linear):
    """An `nn.Linear` (with a large bfloat16 weight) whose products over several rows are computed in float32;
    a plain linear becomes one only for the duration of an inference call (`_upcasting_linears`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() >= MIN_ROWS * self.in_features and x.dtype == torch.bfloat16:
            return linear_in_float32(x, self.weight, self.bias)
        return super().forward(x)


@contextmanager
def _upcasting_linears(model: nn.Module):
    """Within the block, the model's plain `nn.Linear`s (not subclasses: quantised layers keep their own
    kernels) with bfloat16 weights of at least `MIN_WEIGHT` elements on the CPU are `_Float32Linear`s. The
    class is swapped rather than the forward wrapped: compiled code guards on the class, which stays the same
    object from call to call."""
    linears = [m for m in model.modules() if type(m) is nn.Linear and _large_bfloat16_on_cpu(m.weight)]
    for linear in linears:
        linear.__class__ = _Float32Linear
    try:
        yield
    finally:
        for linear in linears:
            linear.__class__ = nn.Linear


def float32_products(method):
    """Decorates a model's inference method: where the model computes in bfloat16 on a CPU that lacks
    bfloat16 arithmetic, its linears compute as float32 products for the call (`_upcasting_linears`)."""

    @functools.wraps(method)
    def run(model, *args, **kwargs):
        applies = model.device.type == "cpu" and model.dtype == torch.bfloat16 and lacks_bfloat16_arithmetic()
        if not applies:
            return method(model, *args, **kwargs)
        with _upcasting_linears(model):
            return method(model, *args, **kwargs)

    return run

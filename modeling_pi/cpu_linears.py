"""Linears during inference on the CPU: large float32 products through oneDNN, bfloat16 ones in float32.

float32. PyTorch computes a float32 linear on the CPU with MKL's matrix product. oneDNN's inner product,
which PyTorch ships beside it (its compiler's CPU linears use it), was faster on the CPU of the README's
numbers for π0's full-size weights, above all over few rows: a flow step's 51 tokens, a decoding step's one
(`benchmarks/linear_kernels.py`). Over many rows the two are about even, and for small weights oneDNN's
per-call set-up costs more than it saves, so weights under `ONEDNN_MIN_WEIGHT` elements keep MKL. So does a
non-contiguous weight (a slice of a wider matrix): oneDNN reorders it first, which is far slower.

bfloat16. Where the CPU has neither bfloat16 instructions nor AVX-512 (on which oneDNN emulates them), PyTorch
runs a bfloat16 linear through a generic loop, several times slower than the same product in float32 (the
README's bfloat16 rows were measured on such a CPU). Upcasting is exact, and so is the product of two bfloat16
numbers in float32: computing the product in float32 and rounding the output once to bfloat16 is the
arithmetic bfloat16 hardware does, float32 accumulation included, up to the order of the sums. Inputs,
outputs, weights and the KV cache stay bfloat16. The weight is upcast `UPCAST_SLICE` elements at a time, so no
float32 copy of a layer, let alone of the model, ever exists. Weights under `MIN_WEIGHT` elements, and
products over fewer than `MIN_ROWS` rows (a decoding step's matrix-vector products), keep the native
kernel: there upcasting costs more than it saves.

`cpu_products` decorates the generation entry points: for the call, the model's plain `nn.Linear`s (SigLIP's,
Gemma's and the projections' alike, and the base layers of LoRA-wrapped ones) that either case covers compute
their products this way. Written here because the choice is the kernel library's, per product, and no PyTorch
setting makes it for full-precision products.
"""

import functools
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN_MIN_WEIGHT = 1 << 20  # float32 weight elements from which oneDNN computes the product
UPCAST_SLICE = 1 << 22  # bfloat16 weight elements upcast at a time (16 MB in float32)
MIN_WEIGHT = 1 << 15  # bfloat16 weight elements: smaller linears keep the native bfloat16 kernel,
MIN_ROWS = 8  # as do products over fewer rows: there upcasting costs more than it saves


# Whether this PyTorch build carries oneDNN's linear (the private op its compiler calls); a constant, which
# compiled code reads without a graph break.
_HAS_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def has_onednn() -> bool:
    """True where this PyTorch build carries oneDNN's linear."""
    return _HAS_ONEDNN


def lacks_bfloat16_arithmetic() -> bool:
    """True on CPUs where PyTorch's bfloat16 matrix products take the generic path: PyTorch's own (private)
    test of whether oneDNN runs them."""
    return not torch.ops.mkldnn._is_mkldnn_bf16_supported()


def takes_onednn(weight: torch.Tensor) -> bool:
    """Whether `float32_product` gives products with this weight to oneDNN (when no gradient is needed)."""
    return (
        weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and weight.numel() >= ONEDNN_MIN_WEIGHT
        and weight.is_contiguous()
        and has_onednn()
    )


@torch.library.custom_op("pi::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed by oneDNN (float32, contiguous weight, no gradients). An opaque
    operator to the compiler, whose own lowering of oneDNN's linear takes only frozen weights: compiled code
    calls it as it is."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def float32_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for float32 operands, through oneDNN where that pays and no gradient is needed."""
    if not torch.is_grad_enabled() and takes_onednn(weight):
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def linear_in_float32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for bfloat16 operands, computed in float32 a slice of output features at a
    time and rounded to bfloat16."""
    rows = max(1, UPCAST_SLICE // weight.shape[1])
    x32 = x.float()
    out = x.new_empty(*x.shape[:-1], weight.shape[0])
    for start in range(0, weight.shape[0], rows):
        features = slice(start, start + rows)
        part_bias = None if bias is None else bias[features].float()
        out[..., features] = float32_product(x32, weight[features].float(), part_bias)
    return out


def _upcasts(weight: torch.Tensor) -> bool:
    return (
        weight.dtype == torch.bfloat16
        and weight.device.type == "cpu"
        and weight.numel() >= MIN_WEIGHT
        and lacks_bfloat16_arithmetic()
    )


class CpuLinear(nn.Linear):
    """An `nn.Linear` that computes its products as this module chooses; a plain linear becomes one only for
    the duration of an inference call (`cpu_products`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != self.weight.dtype:
            return super().forward(x)
        if x.dtype == torch.float32:
            return float32_product(x, self.weight, self.bias)
        if x.numel() >= MIN_ROWS * self.in_features:  # bfloat16, on a CPU without bfloat16 arithmetic
            return linear_in_float32(x, self.weight, self.bias)
        return super().forward(x)


@contextmanager
def _cpu_linears(model: nn.Module):
    """Within the block, the model's plain `nn.Linear`s whose weights either case covers are `CpuLinear`s.
    Subclasses (quantised layers) keep their own kernels. The class is swapped rather than the forward
    wrapped: compiled code guards on the class, which stays the same object from call to call."""
    linears = [
        m for m in model.modules() if type(m) is nn.Linear and (takes_onednn(m.weight) or _upcasts(m.weight))
    ]
    for linear in linears:
        linear.__class__ = CpuLinear
    try:
        yield
    finally:
        for linear in linears:
            linear.__class__ = nn.Linear


def cpu_products(method):
    """Decorates a model's inference method: on the CPU, its large linears compute as this module chooses
    for the call (`_cpu_linears`)."""

    @functools.wraps(method)
    def run(model, *args, **kwargs):
        if model.device.type != "cpu":
            return method(model, *args, **kwargs)
        with _cpu_linears(model):
            return method(model, *args, **kwargs)

    return run

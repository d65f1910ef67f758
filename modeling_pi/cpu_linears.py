"""bfloat16 linears computed as float32 products, on CPUs without bfloat16 arithmetic: `optimize_for_cpu`.

Where the CPU has neither bfloat16 instructions nor AVX-512 (on which oneDNN emulates them), PyTorch runs a
bfloat16 linear through a generic loop, several times slower than the same product in float32 (2.3× at
the benchmark's small size, 5.4× at base: `benchmarks/README.md`). Upcasting is exact, and so is the product
of two bfloat16 numbers in float32: computing the product in float32 and rounding the output once to
bfloat16 is the arithmetic bfloat16 hardware does, float32 accumulation included, up to the order of the
sums. Inputs, outputs, weights and the KV cache stay bfloat16. The weight is upcast `UPCAST_SLICE`
elements at a time, so no float32 copy of a layer, let alone of the model, ever exists. Weights under
`MIN_WEIGHT` elements, and products over fewer than `MIN_ROWS` rows (a decoding step's matrix-vector
products), keep the native kernel: there upcasting costs more than it saves. So does anything that needs
gradients.

Nothing here runs unless asked: `PiForActionGeneration.optimize_for_cpu()` turns the model's plain linears
into `CpuLinear`s, and does nothing on a CPU whose bfloat16 products PyTorch already runs natively.
Written here because the choice is the kernel library's, per product, and no PyTorch setting makes it.
"""

import torch
import torch.nn.functional as F
from torch import nn

UPCAST_SLICE = 1 << 22  # bfloat16 weight elements upcast at a time (16 MB in float32)
MIN_WEIGHT = 1 << 15  # bfloat16 weight elements: smaller linears keep the native bfloat16 kernel,
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


class CpuLinear(nn.Linear):
    """An `nn.Linear` whose large bfloat16 products on the CPU, without gradients, are computed in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            torch.is_grad_enabled()
            or x.dtype != torch.bfloat16
            or self.weight.dtype != torch.bfloat16
            or x.device.type != "cpu"
            or type(self.weight) is not nn.Parameter  # a quantized weight keeps its own kernel
            or self.weight.numel() < MIN_WEIGHT
            or x.numel() < MIN_ROWS * self.in_features
        ):
            return super().forward(x)
        return linear_in_float32(x, self.weight, self.bias)


def use_float32_products(model: nn.Module, enable: bool = True) -> list[str]:
    """Makes the model's plain `nn.Linear`s `CpuLinear`s (or, with `enable=False`, plain again); returns their
    names. Subclasses (quantised layers, LoRA wrappers) keep their own kernels; the base layers of LoRA-wrapped
    linears are plain linears and are included. On a CPU with bfloat16 arithmetic nothing changes. The class is
    swapped rather than the forward wrapped: weights, hooks and adapters stay as they are."""
    if enable and not lacks_bfloat16_arithmetic():
        return []
    old, new = (nn.Linear, CpuLinear) if enable else (CpuLinear, nn.Linear)
    changed = [name for name, module in model.named_modules() if type(module) is old]
    for name in changed:
        model.get_submodule(name).__class__ = new
    return changed

"""Linears' products on the CPU, chosen by shape and dtype: `optimize_for_cpu`.

Two choices of kernel that PyTorch leaves to the BLAS library, made here per product, without gradients:

- **bfloat16 products in float32**, on CPUs without bfloat16 arithmetic. Where the CPU has neither bfloat16
  instructions nor AVX-512 (on which oneDNN emulates them), PyTorch runs a bfloat16 linear through a generic
  loop, several times slower than the same product in float32 (2.3× at the benchmark's small size, 5.4× at
  base: `benchmarks/README.md`). Upcasting is exact, and so is the product of two bfloat16 numbers in
  float32: computing the product in float32 and rounding the output once to bfloat16 is the arithmetic
  bfloat16 hardware does, float32 accumulation included, up to the order of the sums. Inputs, outputs,
  weights and the KV cache stay bfloat16. The weight is upcast `UPCAST_SLICE` elements at a time, so no
  float32 copy of a layer, let alone of the model, ever exists. Weights under `MIN_WEIGHT` elements, and
  products over fewer than `MIN_ROWS` rows (a decoding step's matrix-vector products), keep the native
  kernel: there upcasting costs more than it saves.
- **Products over few rows computed transposed.** A float32 linear over a few dozen rows (a flow step's
  suffix: one row per action step) runs faster on this project's benchmark CPU as `(weight @ xᵀ)ᵀ` than as
  PyTorch's `x @ weightᵀ`, for weights of `MIN_TRANSPOSED_WEIGHT` elements or more (the full-size action
  expert's projections but its keys' and values') and from `MIN_ROWS` to `MAX_TRANSPOSED_ROWS` rows;
  smaller weights, a decoding step's single row and a prefix's hundreds of rows keep PyTorch's product
  (`python -m benchmarks.transposed_products`). The sums are the same, in another order. The output is
  made contiguous again.

Nothing here runs unless asked: `PiForActionGeneration.optimize_for_cpu()` turns the model's plain linears
into `CpuLinear`s. Written here because the choice is the kernel library's, per product, and no PyTorch
setting makes it.
"""

import torch
import torch.nn.functional as F
from torch import nn

UPCAST_SLICE = 1 << 22  # bfloat16 weight elements upcast at a time (16 MB in float32)
MIN_WEIGHT = 1 << 15  # bfloat16 weight elements: smaller linears keep the native bfloat16 kernel,
MIN_ROWS = 8  # as do products over fewer rows: there upcasting costs more than it saves, and transposing too
MIN_TRANSPOSED_WEIGHT = 1 << 21  # weight elements, and
MAX_TRANSPOSED_ROWS = 256  # rows, of the float32 products computed transposed


def lacks_bfloat16_arithmetic() -> bool:
    """True on CPUs where PyTorch's bfloat16 matrix products take the generic path: PyTorch's own (private)
    test of whether oneDNN runs them."""
    return not torch.ops.mkldnn._is_mkldnn_bf16_supported()


def transposed_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed as `(weight @ xᵀ)ᵀ`, made contiguous."""
    columns = x.reshape(-1, x.shape[-1]).t()
    out = torch.mm(weight, columns) if bias is None else torch.addmm(bias[:, None], weight, columns)
    return out.t().contiguous().view(*x.shape[:-1], weight.shape[0])


def pays_transposed(rows: int, weight: torch.Tensor) -> bool:
    """Whether a float32 product over `rows` rows of `weight` is computed transposed (module docstring)."""
    return MIN_ROWS <= rows <= MAX_TRANSPOSED_ROWS and weight.numel() >= MIN_TRANSPOSED_WEIGHT


def float32_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transpose: bool) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for float32 operands; with `transpose`, the transposed product where it pays."""
    if transpose and pays_transposed(x.numel() // x.shape[-1], weight):
        return transposed_product(x, weight, bias)
    return F.linear(x, weight, bias)


def linear_in_float32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      transpose: bool = False) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for bfloat16 operands, computed in float32 a slice of output features at a
    time and rounded to bfloat16; `transpose`: see `float32_product`."""
    rows = max(1, UPCAST_SLICE // weight.shape[1])
    x32 = x.float()
    out = x.new_empty(*x.shape[:-1], weight.shape[0])
    for start in range(0, weight.shape[0], rows):
        features = slice(start, start + rows)
        part_bias = None if bias is None else bias[features].float()
        out[..., features] = float32_product(x32, weight[features].float(), part_bias, transpose)
    return out


class CpuLinear(nn.Linear):
    """An `nn.Linear` whose products on the CPU, without gradients, take the kernels chosen above: bfloat16 ones
    in float32 if `upcast_bfloat16`, float32 ones over few rows transposed if `transpose_few_rows`."""

    upcast_bfloat16 = False
    transpose_few_rows = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            torch.is_grad_enabled()
            or x.device.type != "cpu"
            or x.dtype != self.weight.dtype
            or type(self.weight) is not nn.Parameter  # a quantized weight keeps its own kernel
        ):
            return super().forward(x)
        if x.dtype == torch.float32:
            return float32_product(x, self.weight, self.bias, self.transpose_few_rows)
        if (
            x.dtype != torch.bfloat16
            or not self.upcast_bfloat16
            or self.weight.numel() < MIN_WEIGHT
            or x.numel() < MIN_ROWS * self.in_features
        ):
            return super().forward(x)
        return linear_in_float32(x, self.weight, self.bias, self.transpose_few_rows)


def choose_cpu_kernels(model: nn.Module, float32_products: bool = True, transposed_products: bool = True) -> list[str]:
    """Makes the model's plain `nn.Linear`s `CpuLinear`s taking the kernels asked for (bfloat16 products in
    float32 only on a CPU without bfloat16 arithmetic), or, with nothing to take, plain `nn.Linear`s again;
    returns the names of those that take them: not those with quantized weights, which keep torchao's kernels.
    Subclasses (quantised layers, LoRA wrappers) keep their own kernels; the base layers of LoRA-wrapped linears
    are plain linears and are included. The class is swapped rather than the forward wrapped: weights, hooks and
    adapters stay as they are."""
    upcast = float32_products and lacks_bfloat16_arithmetic()
    linears = [(name, module) for name, module in model.named_modules() if type(module) in (nn.Linear, CpuLinear)]
    for _, module in linears:
        if upcast or transposed_products:
            module.__class__ = CpuLinear
            module.upcast_bfloat16, module.transpose_few_rows = upcast, transposed_products
        else:
            module.__class__ = nn.Linear
            for attribute in ("upcast_bfloat16", "transpose_few_rows"):
                vars(module).pop(attribute, None)
    return [name for name, module in linears if type(module) is CpuLinear and type(module.weight) is nn.Parameter]

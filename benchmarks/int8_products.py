"""What int8 can buy a π model's matrix products on this device, one product at a time.

    python -m benchmarks.int8_products [--repeats 5] [--json rows.json]

A chunk's time goes to two kinds of product: the prefix pass (about 800 image and prompt tokens through the
language model) and the flow steps (50 action tokens through the action expert). For one linear of each
(the full-size MLP up-projections: Gemma 2B's 2048 → 16384 at 800 rows, the 300M expert's 1024 → 4096 at 50
rows) it times the float32 product against: the float32 product as the model computes it after
`optimize_for_cpu()` (transposed over few rows, `modeling_pi/cpu_linears.py`), int8 weights with float32
activations (torchao's weight-only int8, what `quantize_weights("int8")` uses), int8 weights and
activations quantized per call (torchao's `Int8DynamicActivationInt8WeightConfig`), and PyTorch's own
dynamic int8 linear (`torch.ao.quantization.quantize_dynamic`, fbgemm's kernels; deprecated in favour of
torchao). The variants run in alternate rounds
(`timing.alternate`); each row gives the median time, the median over rounds of its ratio to float32, the
rate in GFLOP/s and the largest error relative to the largest float32 output.
"""

import argparse
import copy
import json
import platform
import warnings
from functools import partial

import torch
from torch import nn

from modeling_pi.cpu_linears import choose_cpu_kernels

from .timing import Clock, alternate

SHAPES = {"prefix (800 × 2048 → 16384)": (800, 2048, 16384), "flow step (50 × 1024 → 4096)": (50, 1024, 4096)}


def variants(linear: nn.Linear) -> dict[str, nn.Module]:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    weight_only, dynamic, optimised = copy.deepcopy(linear), copy.deepcopy(linear), nn.Sequential(copy.deepcopy(linear))
    choose_cpu_kernels(optimised, float32_products=False)
    quantize_(weight_only, Int8WeightOnlyConfig())
    quantize_(dynamic, Int8DynamicActivationInt8WeightConfig())
    with warnings.catch_warnings():  # its deprecation notice
        warnings.simplefilter("ignore")
        fbgemm = torch.ao.quantization.quantize_dynamic(nn.Sequential(copy.deepcopy(linear)), {nn.Linear}, dtype=torch.qint8)
    return {"float32": linear, "float32, optimize_for_cpu": optimised, "int8 weights (torchao)": weight_only,
            "int8 weights and activations (torchao)": dynamic, "int8 dynamic (torch.ao, fbgemm)": fbgemm}


def bench(repeats: int, shapes: dict = SHAPES) -> list[dict]:
    """A row per product shape ({label: (rows, in, out)}) and way of computing it."""
    rows = []
    for label, (tokens, width, out) in shapes.items():
        torch.manual_seed(0)
        linear = nn.Linear(width, out, bias=False)
        x = torch.randn(tokens, width)
        modules = variants(linear)
        with torch.no_grad():
            reference = linear(x)
            timings = alternate({name: (Clock(x.device), partial(module, x)) for name, module in modules.items()}, repeats,
                                against=("float32",))
            errors = {name: ((module(x) - reference).abs().max() / reference.abs().max()).item()
                      for name, module in modules.items()}
        for name, timing in timings.items():
            rows.append({"product": label, "weights": name, "ms": timing["total"] * 1e3,
                         "ratio_to_float32": timing["ratio to float32"],
                         "gflop_per_s": 2 * tokens * width * out / timing["total"] / 1e9, "error": errors[name]})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_products", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"median of {args.repeats}\n")
    rows = bench(args.repeats)
    print("| product | weights | ms | × float32 | GFLOP/s | error |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['product']} | {row['weights']} | {row['ms']:.1f} | {row['ratio_to_float32']:.2f} | "
              f"{row['gflop_per_s']:.0f} | {row['error']:.4f} |")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=1)
    return rows


if __name__ == "__main__":
    main()

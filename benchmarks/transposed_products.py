"""Where a float32 product computed transposed pays on this device: the grounds of `optimize_for_cpu`'s rule.

    python -m benchmarks.transposed_products [--repeats 10] [--rows 1,8,50,200,800] [--json rows.json]

For each projection of the full-size models (Gemma 2B, the 300M action expert, SigLIP) and of the base-size
action expert, at several row counts (1: a decoding step; 50: a flow step's suffix; 800: about a prefix),
it times PyTorch's `F.linear(x, weight)` against the transposed product `(weight @ xᵀ)ᵀ` made contiguous
(`modeling_pi.cpu_linears.transposed_product`), in alternate rounds (`timing.alternate`). Each row gives
both median times, the median over rounds of their ratio, and whether `optimize_for_cpu` takes the
transposed product there (`cpu_linears.pays_transposed`).
"""

import argparse
import json
import platform
from functools import partial

import torch
import torch.nn.functional as F

from modeling_pi import cpu_linears

from .timing import Clock, alternate

# label -> (in features, out features)
WEIGHTS = {
    "language model q, o (2048 → 2048)": (2048, 2048),
    "language model k, v (2048 → 256)": (2048, 256),
    "language model gate, up (2048 → 16384)": (2048, 16384),
    "language model down (16384 → 2048)": (16384, 2048),
    "action expert q (1024 → 2048)": (1024, 2048),
    "action expert o (2048 → 1024)": (2048, 1024),
    "action expert k, v (1024 → 256)": (1024, 256),
    "action expert gate, up (1024 → 4096)": (1024, 4096),
    "action expert down (4096 → 1024)": (4096, 1024),
    "SigLIP q, k, v, o (1152 → 1152)": (1152, 1152),
    "SigLIP fc1 (1152 → 4304)": (1152, 4304),
    "SigLIP fc2 (4304 → 1152)": (4304, 1152),
    "base action expert gate, up (512 → 2048)": (512, 2048),
}


def bench(repeats: int, rows: tuple[int, ...], weights: dict = WEIGHTS) -> list[dict]:
    results = []
    for label, (width, out) in weights.items():
        torch.manual_seed(0)
        weight = torch.randn(out, width) / width**0.5
        for tokens in rows:
            x = torch.randn(tokens, width)
            clock = Clock(x.device)
            with torch.no_grad():
                timings = alternate({"linear": (clock, partial(F.linear, x, weight)),
                                     "transposed": (clock, partial(cpu_linears.transposed_product, x, weight))},
                                    repeats, against=("linear",))
            taken = cpu_linears.pays_transposed(tokens, weight)
            results.append({"weight": label, "rows": tokens, "linear_ms": timings["linear"]["total"] * 1e3,
                            "transposed_ms": timings["transposed"]["total"] * 1e3,
                            "ratio": timings["transposed"]["ratio to linear"], "taken": taken})
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transposed_products", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rows", default="1,8,50,200,800", help="comma-separated row counts")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    rows = tuple(int(n) for n in args.rows.split(","))
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"median of {args.repeats}\n")
    results = bench(args.repeats, rows)
    print("| weight | " + " | ".join(f"{n} rows" for n in rows) + " |\n|---|" + "---|" * len(rows))
    for label in dict.fromkeys(r["weight"] for r in results):
        cells = [f"{'**' if r['taken'] else ''}{r['ratio']:.2f}×{'**' if r['taken'] else ''}"
                 for r in results if r["weight"] == label]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    return results


if __name__ == "__main__":
    main()

"""float32 linear products on the CPU: MKL (PyTorch's `F.linear`) against oneDNN's inner product, over
the shapes full-size π0 computes. The evidence for `cpu_linears.py`'s thresholds.

    python -m benchmarks.linear_kernels [--rounds N]   (from the repository root)

Rows x in-features x out-features; each time is the median over rounds in which the contenders run
alternately, so a shared machine's drift falls on both. The rate is the faster kernel's (two operations
per multiply-add): what a model's GFLOP/s in the harness can be set against.
"""

import argparse
import platform

import torch
import torch.nn.functional as F

from benchmarks.timing import Clock, alternate
from modeling_pi.cpu_linears import onednn_linear

# (rows, in, out): flow step (51 tokens), π0-FAST decoding (1), prefix (788) and SigLIP (768) at full size,
# and small weights, below `ONEDNN_MIN_WEIGHT`
SHAPES = [
    (51, 1024, 2048), (51, 2048, 1024), (51, 1024, 4096), (51, 4096, 1024), (51, 1024, 1024), (51, 512, 1024),
    (1, 2048, 2048), (1, 2048, 16384), (1, 16384, 2048), (1, 1024, 1024),
    (128, 1024, 4096), (256, 2048, 2048),
    (788, 2048, 2048), (788, 2048, 1024), (788, 1024, 1024), (788, 2048, 16384), (788, 16384, 2048),
    (768, 1152, 4304), (768, 4304, 1152),
    (51, 128, 512), (788, 256, 1024),
]


def median_ms(contenders: dict, rounds: int) -> dict[str, float]:
    """The contenders run alternately (the harness's `alternate`); each one's median milliseconds."""
    timings = alternate({name: (Clock(torch.device("cpu")), fn) for name, fn in contenders.items()}, rounds)
    return {name: timing["total"] * 1e3 for name, timing in timings.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| rows x in x out | weight elements | MKL ms | oneDNN ms | oneDNN / MKL | GFLOP/s |\n|---|---|---|---|---|---|")
    with torch.no_grad():
        for rows, fan_in, fan_out in SHAPES:
            x, weight = torch.randn(rows, fan_in), torch.randn(fan_out, fan_in) * fan_in**-0.5
            rounds = args.rounds if rows * fan_in * fan_out < 1e9 else max(3, args.rounds // 3)
            ms = median_ms({"mkl": lambda: F.linear(x, weight), "onednn": lambda: onednn_linear(x, weight)}, rounds)
            rate = 2 * rows * fan_in * fan_out / min(ms.values()) / 1e6
            print(f"| {rows} x {fan_in} x {fan_out} | {fan_in * fan_out / 2**20:.2f}M | {ms['mkl']:.3f} | "
                  f"{ms['onednn']:.3f} | {ms['onednn'] / ms['mkl']:.2f} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()

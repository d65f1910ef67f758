"""Weight-only int8 against float32 and bfloat16 on the same weights: chunk latency, memory, action error.

    python -m benchmarks.quantized [--sizes tiny,small,base] [--variants pi0,pi05] [--bits int8] [--repeats 3]
                                   [--steps 10] [--device cpu] [--no-bfloat16] [--demo-episodes 100] [--json rows.json]

For each size and variant, one model with random weights (`models.ours_alone`) in float32, a bfloat16 copy
(skipped with `--no-bfloat16`, which the full size needs to fit in this machine's memory) and each of them
with int8 weights (`--bits int8,int4` adds int4, where torchao has its kernel on the device; where it has
not, the row says so): `quantize_weights` on the vision tower, the language model and the action expert, in a
twin holding the same float tensors for the rest. As `pi serve` runs them, every model on the CPU
has `optimize_for_cpu()` applied. They are timed alternately, as the harness does (`timing.alternate`: the
median of the rounds, and each ratio the median of per-round ratios against float32); `weights MiB` is
the memory of the parameters as stored, `peak MiB` the most tensor memory one chunk adds, and `error` the
largest difference to the float32 chunk from the same noise over its largest action. With
`--demo-episodes N`, the shipped demo policy (π0.5 trained on the built-in task) also runs N held-out
episodes in float32 and with int8 weights: its success rate is what int8 costs a trained model.
"""

import argparse
import copy
import json
import platform

import torch

from modeling_pi.quantization import is_quantized

from .models import SIZES, make_inputs, ours_alone, twin
from .timing import Clock, alternate, peak_added_bytes

MiB = 2**20


def stored_bytes(model) -> int:
    """The parameters' memory as stored: a quantized weight's integer data and scales, not the floats it stands for."""
    total = 0
    for parameter in model.parameters():
        inner = [getattr(parameter, name) for name in parameter.__tensor_flatten__()[0]] if is_quantized(parameter) else [parameter]
        total += sum(tensor.numel() * tensor.element_size() for tensor in inner)
    return total


def precisions(model, bfloat16: bool, bits: list[str]) -> tuple[dict, dict]:
    """name -> model: float32, bfloat16 (a copy), and each with quantized weights (twins holding the rest's
    tensors); and name -> why, for the formats torchao has no kernel for on this device."""
    models, skipped = {"float32": model}, {}
    if bfloat16:
        models["bfloat16"] = copy.deepcopy(model).to(torch.bfloat16)
    for name, base in list(models.items()):
        for format_ in bits:
            quantized = twin(base)
            try:
                quantized.quantize_weights(format_)
            except RuntimeError as err:
                skipped[f"{format_} weights, {name}"] = str(err)
                continue
            models[f"{format_} weights, {name}"] = quantized
    for each in models.values():
        if each.device.type == "cpu":
            each.optimize_for_cpu()
    return models, skipped


def bench(variant: str, size: str, args) -> list[dict]:
    device = torch.device(args.device)
    model = ours_alone(variant, size, None, device)
    inputs = make_inputs(model.config, 1, 3, 20, device)
    models, skipped = precisions(model, args.bfloat16, args.bits.split(","))
    for name, why in skipped.items():
        print(f"{size} {variant} {name}: skipped ({why})")
    state = {"state": inputs.state} if variant == "pi0" else {}

    def chunk(each):
        pixels = inputs.pixel_values.to(each.dtype)
        return lambda: each.generate_actions(pixels, inputs.pixel_attention_mask, inputs.input_ids, inputs.attention_mask,
                                             **state, noise=inputs.noise, num_steps=args.steps)

    with torch.no_grad():
        reference = chunk(model)()
        errors = {name: ((chunk(each)() - reference).abs().max() / reference.abs().max()).item() for name, each in models.items()}
        timings = alternate({name: (Clock(device), chunk(each)) for name, each in models.items()}, args.repeats,
                            against=("float32",))
        peaks = {name: peak_added_bytes(chunk(each), device) for name, each in models.items()}
    return [{"size": size, "variant": variant, "model": name, "chunk_ms": timings[name]["total"] * 1e3,
             "ratio_to_float32": timings[name]["ratio to float32"], "weights_mib": stored_bytes(each) / MiB,
             "peak_mib": peaks[name] / MiB, "error": errors[name]} for name, each in models.items()]


def demo_success(episodes: int) -> dict[str, float]:
    """The shipped demo policy's held-out success rate, in float32 and with int8 weights."""
    from transformers import AutoModel, AutoProcessor

    import modeling_pi  # noqa: F401  (registers "pi")
    from demo_pi.demo import SHIPPED_MODEL, rollout
    from demo_pi.recipe import HELD_OUT_SEEDS_START

    seeds = range(HELD_OUT_SEEDS_START, HELD_OUT_SEEDS_START + episodes)
    processor = AutoProcessor.from_pretrained(str(SHIPPED_MODEL))
    rates = {}
    for name in ("float32", "int8 weights"):
        model = AutoModel.from_pretrained(str(SHIPPED_MODEL)).eval()
        if name != "float32":
            model.quantize_weights("int8")
        rates[name] = rollout(model, processor, seeds).success_rate
    return rates


def table(rows: list[dict]) -> str:
    lines = ["| size | variant | weights | chunk ms | × float32 | weights MiB | peak MiB | error |", "|" + "---|" * 8]
    for row in rows:
        lines.append(f"| {row['size']} | {row['variant']} | {row['model']} | {row['chunk_ms']:.1f} | "
                     f"{row['ratio_to_float32']:.2f} | {row['weights_mib']:.1f} | {row['peak_mib']:.1f} | {row['error']:.4f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quantized", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small,base", help=f"comma-separated, from {', '.join(SIZES)}")
    parser.add_argument("--variants", default="pi0,pi05")
    parser.add_argument("--bits", default="int8", help="comma-separated weight formats: int8, int4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="flow steps per chunk")
    parser.add_argument("--no-bfloat16", dest="bfloat16", action="store_false", help="float32 and its int8 twin only")
    parser.add_argument("--demo-episodes", type=int, default=0, help="also the demo policy's success over this many episodes")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"{machine}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"batch 1, 3 cameras, {args.steps} flow steps, median of {args.repeats}\n", flush=True)
    rows = []
    for size in args.sizes.split(","):
        for variant in args.variants.split(","):
            new = bench(variant, size, args)
            rows += new
            print(table(new).split("\n", 2)[-1], flush=True)
    print("\n" + table(rows))
    result = {"rows": rows}
    if args.demo_episodes:
        result["demo_success"] = demo_success(args.demo_episodes)
        print(f"\ndemo policy, {args.demo_episodes} held-out episodes: " +
              ", ".join(f"{name} {100 * rate:.0f}%" for name, rate in result["demo_success"].items()))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=1)
    return result


if __name__ == "__main__":
    main()

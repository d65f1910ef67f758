"""This project's π models side by side with transformers' built-in PI0 and PI05: latency, training step, memory.

    python -m benchmarks [--sizes tiny,small,base,full] [--dtypes float32,bfloat16] [--device cpu]
                         [--variants pi0,pi05,pi0_fast] [--repeats 5] [--steps 10] [--compile MODE] [--no-train]
                         [--cameras 3] [--absent-cameras 0] [--prompt-tokens 20]
                         [--ablations sdpa,batched-cameras,prefix-trimming] [--json rows.json] [--plot latency.png]
    python -m benchmarks --merge a.json,b.json [--plot latency.png]

For π0 and π0.5 both models (ours and transformers' PI0 / PI05) hold one set of weights (see `models.py`)
and are run alternately in one process; each time is a median over the repeats, after one warm-up round,
and each ratio the median of the per-round ratios (robust to a shared machine speeding up or slowing down
between rounds). A chunk is the vision tower, the language model's pass over the prefix and `--steps` flow
steps, each timed; a training step is forward, backward and AdamW. π0-FAST has no transformers
counterpart and is timed alone; one call decodes `FAST_TOKENS` tokens: `prefill` is its prefix pass into the
cache, `per token` the rest of the call (the decoding loop) per token after the first. The arithmetic of
each eager chunk is counted in one more call (`arithmetic.py`): GFLOP per chunk, and GFLOP/s at its
median time, which tell work left out from work done faster; for π0-FAST, the prefill's (`gflop`) and each
further token's (`per_token_gflop`). `--ablations` adds our model with one optimisation undone (`ablations.py`),
timed in the same rounds, and, for those that change a training step, its training step beside ours. `--rtc`
adds, for π0 and π0.5, a chunk guided towards a previous one (real-time chunking: `prev_actions` with an
inference delay of `RTC_DELAY` steps and half the chunk executed), timed beside ours in the same rounds.
"""

import argparse
import gc
import json
import platform
from functools import partial

import torch

from .ablations import ABLATIONS, ablated, changes_inference, changes_training
from .arithmetic import count_gflop
from .models import SIZES, make_inputs, ours_alone, sharing_weights, transformers_pi0, transformers_pi05, twin
from .timing import Clock, alternate, peak_added_bytes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FAST_TOKENS = 16  # per π0-FAST call (random weights emit no EOS before; `fast_generate` checks)
RTC_DELAY = 4  # control steps of inference delay in the guided chunk (`--rtc`); half the chunk is executed
GUIDED = "ours, guided (real-time chunking)"
MiB = 2**20
TRANSFORMERS = {"pi0": transformers_pi0, "pi05": transformers_pi05}  # the variants timed against transformers


def state_of(variant: str, inputs) -> dict:
    """The state argument of either model: π0 takes the state tensor, π0.5 reads its state in the prompt."""
    return {"state": inputs.state} if variant == "pi0" else {}


def flow_generate(model, inputs, steps, clock, ours: bool, **options):
    """The chunk sampler of either model, with the vision and prefix parts wrapped for timing (one part,
    "prefix", where our prefix pass is compiled: the vision tower runs inside it); `options` go to ours."""
    if not ours:
        clock.wrap(model.model.vlm, "get_image_features", "vision")
        clock.wrap(model.model.vlm, "forward", "prefix")
        state = state_of(model.config.model_type, inputs)
        return lambda: model.sample_actions(**inputs.transformers(), **state, noise=inputs.noise, num_steps=steps)
    if model.compiled_generation is not None and model.compiled_generation.compiles_prefix:
        clock.wrap(model.compiled_generation, "prefix", "prefix")
    else:
        clock.wrap(model, "get_image_features", "vision")
        clock.wrap(model, "encode_prefix", "prefix")
    state = state_of(model.config.variant, inputs)
    return lambda: model.generate_actions(**inputs.ours(), **state, noise=inputs.noise, num_steps=steps, **options)


def guided_generate(model, inputs, steps):
    """Our chunk guided towards a previous one (a fixed random chunk), to run beside ours."""
    previous = torch.randn(inputs.noise.shape, generator=torch.Generator().manual_seed(1)).to(inputs.noise)
    horizon = model.config.action_horizon
    options = {"prev_actions": previous, "inference_delay": min(RTC_DELAY, horizon // 2), "execution_horizon": horizon // 2}
    state = state_of(model.config.variant, inputs)
    return lambda: model.generate_actions(**inputs.ours(), **state, noise=inputs.noise, num_steps=steps, **options)


def fast_generate(model, inputs, clock):
    """π0-FAST decoding of `FAST_TOKENS` tokens, with its prefix pass wrapped for timing as "prefill"."""
    compiled = model.compiled_generation
    if compiled is not None and compiled.compiles_prefix:
        clock.wrap(compiled, "prefix", "prefill")
    else:
        clock.wrap(model, "encode_prefix", "prefill")

    def decode(tokens: int = FAST_TOKENS):
        generated = model.decode_action_tokens(**inputs.ours(), max_new_tokens=tokens)
        if generated.shape[1] != tokens:
            raise RuntimeError(f"π0-FAST stopped after {generated.shape[1]} of {tokens} tokens: per-token time undefined")

    return decode


def train_step(model, inputs, ours: bool):
    """One optimisation step on a fixed batch: forward, backward, AdamW, gradients released. π0-FAST's batch, as
    `PiCollator` gives it: the second half of each row's real prompt tokens as its postfix, whose targets are
    labelled, and no logits output."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-9)
    if ours:
        options = {"actions": inputs.actions, "noise": inputs.noise, "timestep": inputs.timestep,
                   **state_of(model.config.variant, inputs)}
        if model.config.variant == "pi0_fast":
            real = inputs.attention_mask
            postfix = real & (real.cumsum(dim=1) > real.sum(dim=1, keepdim=True) // 2)
            options = {"token_type_ids": postfix.long(), "labels": inputs.input_ids.masked_fill(~postfix, -100),
                       "output_logits": False}
        forward = lambda **changed: model(**inputs.ours(), **{**options, **changed}).loss  # noqa: E731
    else:
        forward = lambda: model(**inputs.transformers(), **state_of(model.config.model_type, inputs),  # noqa: E731
                                noise=inputs.noise, timestep=inputs.timestep, actions=inputs.actions).loss.mean()

    def step(**changed):
        """`changed`: arguments of our training pass that an ablation changes."""
        forward(**changed).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":") for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) * 1024


def training_fits(models, device) -> tuple[bool, str]:
    """Gradients and AdamW's two moments for every model, at the parameters' dtype, with a margin."""
    unique = {p.data_ptr(): p for model in models for p in model.parameters()}
    weights = sum(p.numel() * p.element_size() for p in unique.values())
    needed = 3 * weights * len(models) * 1.2
    if needed > free_bytes(device):
        return False, f"needs about {needed / 2**30:.0f} GiB for gradients and optimiser states"
    return True, ""


def _flow_row(timing: dict, steps: int) -> dict:
    vision = timing.get("vision")  # absent where the vision tower runs inside a compiled prefix pass
    prefix = timing.get("prefix", 0.0)
    flow = timing["total"] - prefix - (vision or 0.0)
    return {"vision_ms": None if vision is None else vision * 1e3, "prefix_ms": prefix * 1e3, "flow_ms": flow * 1e3,
            "flow_step_ms": flow * 1e3 / steps, "total_ms": timing["total"] * 1e3, **_rounds(timing)}


def _rounds(timing: dict) -> dict:
    """Each timed round's total (the JSON's record of drift within a run; the table shows medians)."""
    return {"round_ms": [seconds * 1e3 for seconds in timing["rounds"]]}


def _arithmetic(fn, seconds: float) -> dict:
    """GFLOP per call and the rate reached at the median time `seconds`."""
    gflop = count_gflop(fn)
    return {"gflop": gflop, "gflop_per_s": gflop / seconds}


def _fast_arithmetic(decode, timing: dict) -> dict:
    """π0-FAST's arithmetic, split as its time is: `decode` (from `fast_generate`) counted decoding one token
    (the prefill and the first token's logits) and all of them; each further token adds a share of the difference."""
    prefill = count_gflop(partial(decode, 1))
    per_token = (count_gflop(decode) - prefill) / (FAST_TOKENS - 1)
    per_token_seconds = (timing["total"] - timing["prefill"]) / (FAST_TOKENS - 1)
    return {"gflop": prefill, "gflop_per_s": prefill / timing["prefill"],
            "per_token_gflop": per_token, "per_token_gflop_per_s": per_token / per_token_seconds}


def _counted(name: str, model) -> bool:
    """Whether the row's arithmetic is counted: not for compiled code (the counter's blind spot, and the eager
    twin's anyway), nor for the guided chunk (the counter cannot follow the gradient it takes inside the call).
    Ablation rows run our eager model."""
    return name != GUIDED and getattr(model, "compiled_generation", None) is None


def time_training(models: dict, inputs, dtype, device, repeats: int, ablations=()) -> dict[str, dict]:
    """Training-step time and peak memory per model, alternating (with ratios when transformers' PI0 is among
    them), and per ablation of those in `ablations` that change a training step (our model with it undone, with
    its ratio to ours); `train_skipped` with the reason where gradients and optimiser states would not fit."""
    fits, reason = training_fits(models.values(), device)
    if not fits:
        return {name: {"train_skipped": reason} for name in models}
    inputs.actions, inputs.timestep = inputs.actions.to(dtype), inputs.timestep.to(dtype)
    steps = {name: train_step(model, inputs, ours=name != "transformers") for name, model in models.items()}
    ours = models["ours"]
    undone = {f"ours without {name}": ablated(ours, name, steps["ours"])
              for name in ablations if changes_training(name, ours.config.variant)}
    runs = {**steps, **undone}
    against = ("transformers",) if "transformers" in models else ()
    timings = alternate({name: (Clock(device), step) for name, step in runs.items()}, repeats,
                        against=against + (("ours",) if undone else ()))
    fields = {}
    for name, step in runs.items():
        fields[name] = {"train_ms": timings[name]["total"] * 1e3, "train_peak_mib": peak_added_bytes(step, device) / MiB}
        if name in undone:
            fields[name]["train_ratio_to_ours"] = timings[name]["ratio to ours"]
        if against:
            fields[name]["train_ratio"] = timings[name]["ratio to transformers"]
    return fields


def _compiled_twin(model, mode):
    """Our model again, sharing its weights, with its generation compiled (the warm-up round compiles)."""
    compiled = twin(model)
    compiled.compile_generation(mode=mode)
    return compiled


def _undone(model, ablations, run) -> dict:
    """`run` (a clock and a call of `model`) again per ablation that changes inference, with it undone."""
    clock, call = run
    return {f"ours without {name}": (clock, ablated(model, name, call)) for name in ablations if changes_inference(name)}


def bench_pair(variant, size, dtype, device, args) -> list[dict]:
    """π0 or π0.5 (`variant`), ours against transformers' PI0 or PI05 on the same weights and inputs."""
    theirs = TRANSFORMERS[variant](size, device).to(dtype)
    ours = sharing_weights(theirs, max_token_len=args.prompt_length)
    if device.type == "cpu":
        ours.optimize_for_cpu()  # as `pi serve` does: the `float32-products` and `transposed-products` ablations undo it
    inputs = make_inputs(ours.config, args.batch, args.cameras, args.prompt_tokens, device, absent=args.absent_cameras)
    inputs.pixel_values = inputs.pixel_values.to(dtype)
    models = {"ours": ours, "transformers": theirs}

    with torch.no_grad():
        state = state_of(variant, inputs)
        ours_actions = ours.generate_actions(**inputs.ours(), **state, noise=inputs.noise, num_steps=args.steps)
        theirs_actions = theirs.sample_actions(**inputs.transformers(), **{k: v.to(dtype) for k, v in state.items()},
                                               noise=inputs.noise.to(dtype), num_steps=args.steps)
        difference = (ours_actions.float() - theirs_actions.float()).abs().max().item()
        inputs.state, inputs.noise = inputs.state.to(dtype), inputs.noise.to(dtype)
        generators = dict(models)
        if args.compile:
            generators[f"ours, compiled ({args.compile})"] = _compiled_twin(ours, args.compile)
        clocks = {name: Clock(device) for name in generators}
        runs = {name: (clocks[name], flow_generate(model, inputs, args.steps, clocks[name], name != "transformers"))
                for name, model in generators.items()}
        ablations = _undone(ours, args.ablations, runs["ours"])  # our model, one optimisation undone
        if args.rtc:
            ablations[GUIDED] = (clocks["ours"], guided_generate(ours, inputs, args.steps))
        runs.update(ablations)
        timings = alternate(runs, args.repeats, against=("transformers", "ours"))
        memory = {name: peak_added_bytes(runs[name][1], device) for name in generators}
        eager = [name for name in runs if _counted(name, generators.get(name, ours))]
        arithmetic = {name: _arithmetic(runs[name][1], timings[name]["total"]) for name in eager}

    rows = [{"size": size, "dtype": str(dtype).removeprefix("torch."), "variant": variant, "model": name,
             **_flow_row(timings[name], args.steps), **arithmetic.get(name, {}),
             "total_ratio": timings[name]["ratio to transformers"],
             "ratio_to_ours": timings[name]["ratio to ours"] if name in ablations else None,
             "peak_mib": memory[name] / MiB if name in memory else None, "max_difference": difference}
            for name in runs]
    if args.train:
        _add_training(rows, time_training(models, inputs, dtype, device, args.repeats, args.ablations))
    return rows


def _add_training(rows: list[dict], training: dict[str, dict]) -> None:
    """Each model's training fields into its row; a row of their own for ablations that change only training."""
    for row in rows:
        row.update(training.pop(row["model"], {}))
    case = {key: rows[0][key] for key in ("size", "dtype", "variant")}
    rows += [{**case, "model": name, **fields} for name, fields in training.items()]


def bench_ours_alone(variant, size, dtype, device, args) -> list[dict]:
    model = ours_alone(variant, size, args.prompt_length, device).to(dtype)
    if device.type == "cpu":
        model.optimize_for_cpu()
    models = {"ours": model}
    if args.compile:
        models[f"ours, compiled ({args.compile})"] = _compiled_twin(model, args.compile)
    inputs = make_inputs(model.config, args.batch, args.cameras, args.prompt_tokens, device, absent=args.absent_cameras)
    inputs.pixel_values = inputs.pixel_values.to(dtype)
    fast = variant == "pi0_fast"
    with torch.no_grad():
        clocks = {name: Clock(device) for name in models}
        runs = {name: (clocks[name], fast_generate(m, inputs, clocks[name]) if fast
                       else flow_generate(m, inputs, args.steps, clocks[name], ours=True)) for name, m in models.items()}
        ablations = _undone(model, args.ablations, runs["ours"])
        if args.rtc and not fast:
            ablations[GUIDED] = (clocks["ours"], guided_generate(model, inputs, args.steps))
        runs.update(ablations)
        timings = alternate(runs, args.repeats, against=("ours",) if ablations else ())
        rows = []
        for name, (_, run) in runs.items():
            timing, row = timings[name], {"size": size, "dtype": str(dtype).removeprefix("torch."), "variant": variant, "model": name}
            eager = _counted(name, models.get(name, model))
            if fast:
                row["prefill_ms"] = timing["prefill"] * 1e3
                row["per_token_ms"] = (timing["total"] - timing["prefill"]) / (FAST_TOKENS - 1) * 1e3
                row.update(_rounds(timing))
                if eager:
                    row.update(_fast_arithmetic(run, timing))
            else:
                row.update(_flow_row(timing, args.steps))
                if eager:
                    row.update(_arithmetic(run, timing["total"]))
            if name in ablations:
                row["ratio_to_ours"] = timing["ratio to ours"]
            else:
                row["peak_mib"] = peak_added_bytes(run, device) / MiB
            rows.append(row)
    if args.train:
        _add_training(rows, time_training({"ours": model}, inputs, dtype, device, args.repeats, args.ablations))
    return rows


def _cell(row, key, digits=1):
    value = row.get(key)
    return "—" if value is None else f"{value:.{digits}f}"


def table(rows) -> str:
    """Markdown: one line per model and case."""
    lines = ["| size | dtype | variant | model | vision ms | prefix ms | flow step ms | chunk ms | × transformers "
             "| GFLOP | GFLOP/s | peak MiB | train step ms | × transformers | train peak MiB | max Δ actions |",
             "|" + "---|" * 16]
    for row in rows:
        if row["variant"] == "pi0_fast" and "prefill_ms" in row:
            timing = [f"prefill {_cell(row, 'prefill_ms')}", "—", f"{_cell(row, 'per_token_ms', 2)} / token", "—", "—",
                      _cell(row, "gflop", 2), _cell(row, "gflop_per_s")]  # the prefill's arithmetic
        else:
            timing = [_cell(row, "vision_ms"), _cell(row, "prefix_ms"), _cell(row, "flow_step_ms", 2),
                      _cell(row, "total_ms"), _cell(row, "total_ratio", 2), _cell(row, "gflop", 2), _cell(row, "gflop_per_s")]
        train = [row["train_skipped"], "—", "—"] if "train_skipped" in row else [
            _cell(row, "train_ms"), _cell(row, "train_ratio", 2), _cell(row, "train_peak_mib")]
        model = row["model"]
        if row.get("ratio_to_ours") is not None:
            trained = "" if row.get("train_ratio_to_ours") is None else f"; training {row['train_ratio_to_ours']:.2f}×"
            model += f" ({row['ratio_to_ours']:.2f}× ours{trained})"
        elif row.get("train_ratio_to_ours") is not None:  # an ablation that changes only training
            model += f" (training {row['train_ratio_to_ours']:.2f}× ours)"
        lines.append("| " + " | ".join([row["size"], row["dtype"], row["variant"], model, *timing,
                                        _cell(row, "peak_mib"), *train, _cell(row, "max_difference", 7)]) + " |")
    return "\n".join(lines)


def plot(rows, path):
    """π0 chunk latency against model size, ours and transformers', one panel per dtype (log scale);
    each of our points is labelled with its ratio to transformers'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [row for row in rows if row["variant"] == "pi0" and row["model"] in ("ours", "transformers")]
    dtypes = sorted({row["dtype"] for row in pairs}, reverse=True)
    figure, axes = plt.subplots(1, len(dtypes), figsize=(5 * len(dtypes), 4), squeeze=False)
    for axis, dtype in zip(axes[0], dtypes):
        sizes = [size for size in SIZES if any(row["size"] == size and row["dtype"] == dtype for row in pairs)]
        for model, marker in (("transformers", "s"), ("ours", "o")):
            points = [next(row for row in pairs if (row["size"], row["dtype"], row["model"]) == (size, dtype, model))
                      for size in sizes]
            axis.plot(range(len(sizes)), [row["total_ms"] for row in points], marker=marker, label=model)
            if model == "ours":
                for i, row in enumerate(points):
                    axis.annotate(f"{row['total_ratio']:.2f}×", (i, row["total_ms"]), textcoords="offset points",
                                  xytext=(0, -14), ha="center")
        axis.margins(x=0.12, y=0.2)
        axis.set_xticks(range(len(sizes)), sizes)
        axis.set_yscale("log")
        axis.set_xlabel("model size")
        axis.set_ylabel("ms per action chunk")
        axis.set_title(f"π0, {dtype}")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small,base", help=f"comma-separated, from {', '.join(SIZES)}")
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16")
    parser.add_argument("--variants", default="pi0", help="comma-separated: pi0, pi05 (both against transformers), pi0_fast")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="flow steps per chunk")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--absent-cameras", type=int, default=0, help="of those, how many are masked in every row "
                        "(a robot with fewer cameras than the checkpoint)")
    parser.add_argument("--prompt-tokens", type=int, default=20, help="real prompt tokens; the rest is padding")
    parser.add_argument("--prompt-length", type=int, default=None, help="padded prompt length (the variant's default)")
    parser.add_argument("--compile", metavar="MODE", help="also time our model with its generation compiled "
                        "(torch.compile mode: default, reduce-overhead for CUDA graphs, ...)")
    parser.add_argument("--ablations", default="", help=f"comma-separated, from {', '.join(ABLATIONS)}: extra rows "
                        "(each variant), ours with that optimisation undone")
    parser.add_argument("--rtc", action="store_true", help="also time a chunk guided towards a previous one (real-time "
                        "chunking), beside ours (π0, π0.5)")
    parser.add_argument("--no-train", dest="train", action="store_false", help="skip the training step")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--merge", help="comma-separated --json files of earlier runs: print and plot their rows, run nothing")
    parser.add_argument("--plot", help="write a PNG of π0 chunk latency here (needs matplotlib)")
    args = parser.parse_args(argv)
    args.ablations = [name for name in args.ablations.split(",") if name]
    if not 0 <= args.absent_cameras < args.cameras:
        parser.error(f"--absent-cameras must leave at least one of the {args.cameras} cameras present")
    unknown = set(args.ablations) - set(ABLATIONS)
    if unknown:
        parser.error(f"unknown ablation(s) {', '.join(sorted(unknown))}; choose from {', '.join(ABLATIONS)}")

    if args.merge:
        rows = [row for name in args.merge.split(",") for row in json.loads(open(name).read())]
        print(table(rows))
        if args.plot:
            plot(rows, args.plot)
        return rows

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    processor = platform.processor() or platform.machine()
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{processor}, {torch.get_num_threads()} threads"
    cameras = f"{args.cameras} cameras" + (f" ({args.absent_cameras} absent)" if args.absent_cameras else "")
    print(f"{machine}, torch {torch.__version__}; batch {args.batch}, {cameras}, {args.steps} flow steps, "
          f"median of {args.repeats}\n", flush=True)

    rows = []
    for dtype_name in args.dtypes.split(","):
        for size in args.sizes.split(","):
            for variant in args.variants.split(","):
                if variant in TRANSFORMERS:
                    new = bench_pair(variant, size, DTYPES[dtype_name], device, args)
                else:
                    new = bench_ours_alone(variant, size, DTYPES[dtype_name], device, args)
                rows += new
                print(table(new).split("\n", 2)[-1], flush=True)
                gc.collect()
    print("\n" + table(rows))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=1)
    if args.plot:
        plot(rows, args.plot)
    return rows

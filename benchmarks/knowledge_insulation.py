"""What knowledge insulation costs a training step: time and peak memory with and without it, on the same
model and batch (forward, backward, AdamW; alternating rounds, the median, and the median of per-round ratios).

    OMP_NUM_THREADS=1 python -m benchmarks.knowledge_insulation [--repeats 5]

Two models: the demo's π0.5 with the recipe's knowledge-insulation sizing (`demo_pi.recipe`) on 32 frames of its
demonstrations, and the harness's "small" π0.5 (`models.ours_alone`) on random inputs with 64 FAST targets.
"""

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from demo_pi.demonstrations import IMAGE_KEYS, write_demonstrations
from demo_pi.recipe import DEFAULT_FAST_VOCAB, fast_prompt_budget, fit_fast_tokenizer, init_model_folder
from modeling_pi import PiForActionGeneration
from processing_pi import PiProcessor
from processing_pi.prompts import fast_ids_to_vocab
from training_pi import LeRobotDataset, PiCollator, compute_norm_stats

from .models import make_inputs, ours_alone
from .timing import Clock, alternate, peak_added_bytes


def _step(model, batch: dict):
    """One training step on a fixed batch: forward, backward, AdamW (a tiny rate), gradients released."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-9)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _time_pair(model, plain: dict, insulated: dict, repeats: int) -> dict:
    """The step without and with knowledge insulation on `model`'s weights (a copy flagged for it), timed in
    alternate rounds (`timing.alternate`): the median time, the median over rounds of the ratio to the step without
    it, and the peak memory of one more step."""
    model = model.train()
    twin = copy.deepcopy(model)
    twin.config.knowledge_insulation = True
    steps = {"without KI": _step(model, plain), "with KI": _step(twin, insulated)}
    cpu = torch.device("cpu")
    timings = alternate({mode: (Clock(cpu), step) for mode, step in steps.items()}, repeats, against=("without KI",))
    return {mode: {"step_ms": timings[mode]["total"] * 1e3, "ratio": timings[mode]["ratio to without KI"],
                   "peak_mib": peak_added_bytes(step, cpu) / 2**20} for mode, step in steps.items()}


def demo_cost(repeats: int, folder: Path) -> dict:
    """The demo's model (the recipe's KI sizing) on 32 frames of 200 demonstrations."""
    dataset = write_demonstrations(folder / "demonstrations", range(200), 0.3)
    fast, longest = fit_fast_tokenizer(dataset, DEFAULT_FAST_VOCAB)
    init = init_model_folder(folder / "init", "pi05", 0, DEFAULT_FAST_VOCAB, fast_prompt_budget(longest))
    processor = PiProcessor.from_pretrained(init)
    frames = LeRobotDataset(dataset, processor.action_horizon, {key: camera for camera, key in IMAGE_KEYS.items()})
    processor.norm_stats = compute_norm_stats(frames)
    samples = [frames[int(i)] for i in np.random.default_rng(0).choice(len(frames), 32, replace=False)]
    plain = PiCollator(processor)(samples)
    insulated = PiCollator(processor.replace(action_tokenizer=fast, knowledge_insulation=True))(samples)
    noise, timestep = torch.randn(plain["actions"].shape), torch.full((32,), 0.5)
    plain, insulated = ({**batch, "noise": noise, "timestep": timestep} for batch in (plain, insulated))
    return _time_pair(PiForActionGeneration.from_pretrained(init), plain, insulated, repeats)


SMALL_BATCH, SMALL_PROMPT, SMALL_TARGETS = 8, 20, 64  # the harness's 20 prompt tokens; 62 FAST ids + "|" + EOS


def small_cost(repeats: int) -> dict:
    """The benchmark harness's "small" π0.5 (`models.ours_alone`) on random inputs, batch 8: a prompt of 20 tokens,
    then `SMALL_TARGETS` FAST targets for the insulated step (the budget fits both; the plain step trims the
    padding)."""
    torch.manual_seed(0)
    model = ours_alone("pi05", "small", SMALL_PROMPT + SMALL_TARGETS)
    inputs = make_inputs(model.config, SMALL_BATCH, 3, SMALL_PROMPT, "cpu")
    plain = {**inputs.ours(), "actions": inputs.actions, "noise": inputs.noise, "timestep": inputs.timestep}
    prompt = inputs.attention_mask
    postfix = ~prompt
    fast_ids = torch.randint(0, 1024, postfix.shape)  # FAST ids, written where the language vocabulary ends
    targets = torch.tensor(fast_ids_to_vocab(fast_ids.flatten(), model.config.text_config.vocab_size)).view_as(fast_ids)
    input_ids = torch.where(postfix, targets, inputs.input_ids)
    insulated = {**plain, "input_ids": input_ids, "attention_mask": prompt | postfix, "token_type_ids": postfix.long(),
                 "labels": input_ids.masked_fill(~postfix, -100)}
    return _time_pair(model, plain, insulated, repeats)


def cost_table(costs: dict[str, dict]) -> str:
    lines = ["| model, batch | mode | step (median) | ratio to without KI | peak memory of a step |", "|---|---|---|---|---|"]
    for size, modes in costs.items():
        for mode, cost in modes.items():
            lines.append(f"| {size} | {mode} | {cost['step_ms']:.0f} ms | {cost['ratio']:.2f} | {cost['peak_mib']:.1f} MiB |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.knowledge_insulation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        costs = {"demo, 32": demo_cost(args.repeats, Path(folder)), f"small, {SMALL_BATCH}": small_cost(args.repeats)}
    print(f"{torch.get_num_threads()} thread(s), median of {args.repeats} rounds after one warm-up "
          f"({(time.perf_counter() - start) / 60:.1f} min)\n\n{cost_table(costs)}")
    return costs


if __name__ == "__main__":
    main()

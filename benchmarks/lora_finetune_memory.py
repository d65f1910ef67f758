"""Step time and peak memory of LoRA fine-tuning of the full-size π0.5 architecture on the CPU.

    python benchmarks/lora_finetune_memory.py [--steps 2] [--dtype bfloat16|float32] [--freeze-vision]

Batch 1, three cameras, a 200-token prompt, gradient checkpointing, the reference's LoRA presets
(frozen Gemma weights in `--dtype`, adapters and the trainable non-Gemma modules in float32), AdamW.
Random weights: speed and memory do not depend on their values. Peak memory is the process's peak
resident set size (`ru_maxrss`), which includes building the model.
"""

import argparse
import platform
import resource
import time

import torch

from configuration_pi import PiConfig
from modeling_pi import PiForActionGeneration
from training_pi import apply_lora


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--freeze-vision", action="store_true", help="train adapters and flow projections only")
    args = parser.parse_args()
    torch.manual_seed(0)

    start = time.perf_counter()
    config = PiConfig(variant="pi05")
    model = PiForActionGeneration._from_config(config, dtype=getattr(torch, args.dtype))
    model = apply_lora(model, freeze_vision=args.freeze_vision)
    for param in model.parameters():  # adapters and fully trained modules in float32
        if param.requires_grad:
            param.data = param.data.float()
    model.base_model.model.activation_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2.5e-5)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"π0.5 full size, LoRA gemma_2b_lora + gemma_300m_lora{', vision frozen' if args.freeze_vision else ''}, "
          f"frozen weights {args.dtype}; "
          f"{trainable / 1e6:.1f}M trainable parameters; built in {time.perf_counter() - start:.0f} s, "
          f"peak {peak_gib():.1f} GiB so far")
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")

    size = config.vision_config.image_size
    batch = {
        "pixel_values": torch.rand(1, 3, 3, size, size) * 2 - 1,
        "pixel_attention_mask": torch.ones(1, 3, dtype=torch.bool),
        "input_ids": torch.randint(3, 1000, (1, config.max_token_len)),
        "attention_mask": torch.ones(1, config.max_token_len, dtype=torch.bool),
        "actions": torch.randn(1, config.action_horizon, config.action_dim),
    }
    print("| step | seconds | peak memory (GiB) |\n|---|---|---|")
    for step in range(1, args.steps + 1):
        begin = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"| {step} | {time.perf_counter() - begin:.1f} | {peak_gib():.1f} |", flush=True)


if __name__ == "__main__":
    main()

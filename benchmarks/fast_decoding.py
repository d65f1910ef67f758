"""Decode speed of π0-FAST: milliseconds per generated token, free and constrained to the FAST action
range, on a small random-weight config.

    python benchmarks/fast_decoding.py [--threads N] [--repeats N]

Per-token time is (time for 48 new tokens − time for 16) / 32, so the prefix pass cancels out; each
number is the median over the repeats. Greedy decoding; a run that stops early (every row emitted EOS)
is an error, so every number covers the same count of tokens.
"""

import argparse
import platform
import statistics
import time

import torch

from configuration_pi import PiConfig
from modeling_pi import PiForActionGeneration

SHORT, LONG = 16, 48
FAST_VOCAB, SKIP = 1024, 128


def small_config() -> PiConfig:
    text = {"model_type": "gemma", "vocab_size": 32000, "hidden_size": 256, "intermediate_size": 1024,
            "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 64}
    vision = {"model_type": "siglip_vision_model", "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": 224, "patch_size": 14, "vision_use_head": False}
    return PiConfig(variant="pi0_fast", text_config=text, vision_config=vision, max_token_len=64)


def seconds(model, inputs, max_new_tokens, **options) -> float:
    start = time.perf_counter()
    tokens = model.generate_actions(*inputs, max_new_tokens=max_new_tokens, **options)
    elapsed = time.perf_counter() - start
    if tokens.shape[1] != max_new_tokens:
        raise RuntimeError("decoding stopped early (all rows emitted EOS); pick another seed")
    return elapsed


def per_token_ms(model, inputs, repeats, **options) -> float:
    runs = []
    for _ in range(repeats):
        short = seconds(model, inputs, SHORT, **options)
        long = seconds(model, inputs, LONG, **options)
        runs.append((long - short) / (LONG - SHORT) * 1000)
    return statistics.median(runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = small_config()
    model = PiForActionGeneration(config).eval()
    batch, prompt = 2, config.max_token_len
    inputs = (torch.rand(batch, 3, 3, 224, 224) * 2 - 1, torch.ones(batch, 3, dtype=torch.bool),
              torch.randint(2, config.text_config.vocab_size, (batch, prompt)), torch.ones(batch, prompt, dtype=torch.bool))
    vocab = config.text_config.vocab_size
    action_range = torch.arange(vocab - 1 - SKIP - (FAST_VOCAB - 1), vocab - SKIP)  # FAST ids mapped into the vocab
    cases = {
        "KV cache": {},
        f"KV cache, constrained to {FAST_VOCAB} action ids": {"allowed_token_ids": action_range},
    }
    prefix_len = config.num_image_tokens * 3 + prompt
    print(f"π0-FAST decoding, small config (LM width {config.text_config.hidden_size}, depth "
          f"{config.text_config.num_hidden_layers}, vocab {vocab}), batch {batch}, prefix {prefix_len} tokens")
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}\n")
    print("| decoding | ms / token |\n|---|---|")
    for name, options in cases.items():
        print(f"| {name} | {per_token_ms(model, inputs, args.repeats, **options):.2f} |")


if __name__ == "__main__":
    with torch.no_grad():
        main()

"""openpi's LoRA adapters, merged into the weights they adapt.

openpi fine-tunes with LoRA under its `*_low_mem_finetune` configs (the `gemma_2b_lora` language model, rank 16,
and the `gemma_300m_lora` action expert, rank 32, both with alpha = rank). Such a checkpoint holds every Gemma
weight as released beside two low-rank factors, `lora_a` and `lora_b`, that the frozen weight never absorbs.
Converted, they are added into it once, so that the model is an ordinary π model and loads with no adapter:

- An attention einsum (`q_einsum`, `kv_einsum`, `qkv_einsum`: w [..., D, H], a [..., D, r], b [..., r, H]) adds
  x·a·b, one product per head (and per key/value slot), times alpha / r: the weight gains (alpha / r)·a·b.
- The attention output (`attn_vec_einsum`: w [N, H, D], a [N, H, r], b [N, r, D]) contracts the heads twice in
  openpi's equations: x [.., N, H] meets a over N and H (`BTNH,NHL->BTL`), and the result meets b summed over its
  heads (`BTL,NLD->BTD`). Every head's weight gains (alpha / r)·a[n]·Σ b.
- The MLP (`gating_einsum` w [2, D, F] with a [2, D, r], b [2, r, F]; `linear` w [F, D] with a [F, r], b [r, D])
  adds x·a·b unscaled: openpi's feed-forward LoRA applies no alpha.

Every tensor carries the stacked layers first. The merge is done in float32 and works on meta tensors too.
Hand-written because PEFT reads its own adapter layout, not openpi's einsum factors.
"""

import math

import numpy as np
import torch

from conversion.hf_folder import ConversionError

ATTENTION = ("q_einsum", "kv_einsum", "qkv_einsum")
ATTENTION_OUTPUT = "attn_vec_einsum"
MLP = ("gating_einsum", "linear")


def _float32(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.float()
    return torch.from_numpy(np.asarray(value, dtype=np.float32))


def _adapted(key: str) -> tuple[str, str, str] | None:
    """For a LoRA factor's key: (the weight it adapts, "a" or "b", the kind of weight); else None."""
    module, _, name = key.rpartition("/")
    kind = module.rpartition("/")[2].removesuffix("_1")  # "_1": the action expert's
    if name in ("lora_a", "lora_b") and kind in (*ATTENTION, ATTENTION_OUTPUT):
        return f"{module}/w", name[-1], kind
    if kind == "mlp":
        for weight in MLP:
            if name in (f"{weight}_lora_a", f"{weight}_lora_b"):
                return f"{module}/{weight}", name[-1], kind
    return None


def check_lora_alpha(lora_alpha: float | None) -> None:
    if lora_alpha is not None and not (math.isfinite(lora_alpha) and lora_alpha > 0):
        raise ConversionError(f"The LoRA alpha must be a finite number above 0, got {lora_alpha}.")


def merge_lora(params: dict, lora_alpha: float | None = None) -> tuple[dict, dict[str, int]]:
    """`params` with every openpi LoRA pair added into its weight and removed; and {weight: rank} of what was
    merged. `lora_alpha`: the attention adapters' alpha (default: each one's rank, as openpi's LoRA variants have
    it)."""
    check_lora_alpha(lora_alpha)
    pairs: dict[str, dict] = {}
    for key in params:
        if (adapted := _adapted(key)) is not None:
            weight, factor, kind = adapted
            pairs.setdefault(weight, {"kind": kind})[factor] = key
    merged, ranks = dict(params), {}
    for weight, pair in sorted(pairs.items()):
        if "a" not in pair or "b" not in pair or weight not in params:
            have = " and ".join(pair[f] for f in ("a", "b") if f in pair)
            lacking = "the weight it adapts" if weight not in params else "the other factor"
            raise ConversionError(f"The checkpoint has the LoRA {have} without {lacking} ({weight}).")
        w, a, b = (_float32(params[key]) for key in (weight, pair["a"], pair["b"]))
        rank = a.shape[-1] if a.dim() else 0
        fitting = (*w.shape[:-1], rank), (*w.shape[:-2], rank, w.shape[-1])  # a [..., I, r], b [..., r, O]
        if rank < 1 or (tuple(a.shape), tuple(b.shape)) != fitting:
            raise ConversionError(f"The LoRA factors of {weight} have shapes {tuple(a.shape)} and {tuple(b.shape)}, which "
                                  f"do not adapt its {tuple(w.shape)}.")
        if pair["kind"] == ATTENTION_OUTPUT:
            b = b.sum(dim=-3, keepdim=True)  # openpi contracts the heads of b too: [L, 1, r, D]
        delta = a @ b
        if pair["kind"] != "mlp":
            delta = delta * ((rank if lora_alpha is None else lora_alpha) / rank)
        merged[weight] = w + delta
        del merged[pair["a"]], merged[pair["b"]]
        ranks[weight] = rank
    return merged, ranks

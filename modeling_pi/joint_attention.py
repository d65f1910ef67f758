"""Joint attention: the language model and the action expert run as one transformer, layer by layer.

Each token belongs to one expert (prefix tokens to the language model, suffix tokens to the action
expert). In every layer each expert normalises and projects its own tokens to queries, keys and
values; the two sequences are concatenated and attend in a single call, through transformers'
attention interface (eager, sdpa, ...); the output is split back and each expert applies its own
output projection, MLP and residuals. A stream may be absent: the prefix alone fills the KV cache,
the suffix alone runs against it.

Which token may attend to which follows the reference's block-causal rule: every token carries an
"ar" flag; with c = cumsum(ar), token i attends to token j iff c[j] <= c[i] and both are valid.
Written here because transformers' mask builders express causal, sliding and bidirectional-block
masks, not this flag-driven one over two experts' tokens.

Each expert's MLP is Gemma's, `down(gelu(gate(x)) * up(x))`. Without gradients (sampling, decoding) the
activation and the product are computed in place, in the gate projection's output, so the MLP allocates two
hidden-width tensors instead of four. At full size over a prefix of some 800 tokens each is 52 MB, above
the size from which glibc's malloc (PyTorch's CPU allocator) maps every block afresh, so each allocation
faults its pages in again: in place halves that, and the MLP's peak memory falls by a third. Like the
attention module, the MLP module is used for its projections, whose hooks and adapters apply.
"""

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gemma.modeling_gemma import (
    GemmaDecoderLayer,
    GemmaMLP,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from .action_expert import apply_norm


def block_causal_mask(valid: torch.Tensor, ar: torch.Tensor) -> torch.Tensor:
    """[B, T] validity and ar flags -> [B, T, T] bool, True where query i may attend to key j."""
    blocks = torch.cumsum(ar.long(), dim=1)
    allowed = blocks[:, None, :] <= blocks[:, :, None]
    return allowed & valid[:, None, :] & valid[:, :, None]


def last_valid_position(valid: torch.Tensor) -> torch.Tensor:
    """[B, T] validity -> [B] index of each row's last valid token."""
    return (valid.long() * torch.arange(valid.shape[1], device=valid.device)).argmax(dim=1)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool [B, T, S] -> additive float mask [B, 1, T, S] as the attention interface takes it."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def at_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] at `positions` [B, K] -> [B, K, ...]: each row's own positions."""
    index = positions.reshape(*positions.shape, *[1] * (x.dim() - 2)).expand(*positions.shape, *x.shape[2:])
    return x.gather(1, index)


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, T, H * head_dim] -> [B, H, T, head_dim]."""
    return x.view(*x.shape[:-1], -1, head_dim).transpose(1, 2)


def gemma_mlp(mlp: GemmaMLP, x: torch.Tensor, in_place: bool = True) -> torch.Tensor:
    """`mlp(x)`; with `in_place` and without gradients, with its tanh GELU and its product computed in place
    (module docstring)."""
    if not in_place or torch.is_grad_enabled() or type(mlp) is not GemmaMLP:
        return mlp(x)
    hidden = mlp.gate_proj(x)
    if mlp.config.hidden_act == "gelu_pytorch_tanh":
        torch.ops.aten.gelu_(hidden, approximate="tanh")
    else:
        hidden = mlp.act_fn(hidden)
    return mlp.down_proj(hidden.mul_(mlp.up_proj(x)))


def _gated(residual: torch.Tensor, update: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    return residual + (update if gate is None else update * gate)


def joint_layer(
    layers: tuple[GemmaDecoderLayer, GemmaDecoderLayer],
    hidden_states: list[torch.Tensor | None],
    conds: tuple[torch.Tensor | None, torch.Tensor | None],
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor,
    attn_implementation: str,
    cache=None,
    layer_idx: int = 0,
    read: torch.Tensor | None = None,
    in_place_mlp: bool = True,
    insulate: bool = False,
) -> list[torch.Tensor | None]:
    """One decoder layer over both experts' tokens; `None` streams are skipped.

    `read` [B, K] (a last layer) names the positions of the language model's stream whose outputs anyone
    reads: all its keys and values are computed, but its queries, attention output and MLP only there, and
    its output is [B, K, D], or None with K = 0; the action expert's stream, if any, is computed in full.
    A layer left with no queries stops once its keys and values are in `cache`. `in_place_mlp`: see `gemma_mlp`.
    `insulate` (knowledge insulation, both streams present, no `read`): the action expert reads the language
    model's keys and values through a stop-gradient, so that nothing the expert computes trains the language
    model; the two streams then attend in two calls, which is the same attention.
    """
    active = [i for i, h in enumerate(hidden_states) if h is not None]
    queried = None  # the rows of the joint sequence that get queries, where not all of them do
    if read is not None:
        if hidden_states[0] is None:
            raise ValueError("`read` selects positions of the language model's stream, which is absent")
        total = sum(hidden_states[i].shape[1] for i in active)
        rest = torch.arange(hidden_states[0].shape[1], total, device=read.device).expand(len(read), -1)
        queried = torch.cat([read, rest], dim=1)
    queries, keys, values, gates = [], [], [], {}
    for i in active:
        attn = layers[i].self_attn
        normed, gates[i] = apply_norm(layers[i].input_layernorm, hidden_states[i], conds[i])
        keys.append(_heads(attn.k_proj(normed), attn.head_dim))
        values.append(_heads(attn.v_proj(normed), attn.head_dim))
        if i == 0 and queried is not None:
            if read.shape[1] == 0:
                continue
            normed = at_positions(normed, read)
        queries.append(_heads(attn.q_proj(normed), attn.head_dim))
    key, value = torch.cat(keys, dim=2), torch.cat(values, dim=2)

    cos, sin = position_embeddings
    if queried is None:
        query, key = apply_rotary_pos_emb(torch.cat(queries, dim=2), key, cos, sin)
    else:
        _, key = apply_rotary_pos_emb(key, key, cos, sin)
        if not queries:
            if cache is not None:
                cache.update(key, value, layer_idx)
            return [None] * len(hidden_states)
        query = torch.cat(queries, dim=2)
        query, _ = apply_rotary_pos_emb(query, query, at_positions(cos, queried), at_positions(sin, queried))
        attention_mask = at_positions(attention_mask.transpose(1, 2), queried).transpose(1, 2)
        hidden_states = list(hidden_states)
        hidden_states[0] = at_positions(hidden_states[0], read) if read.shape[1] else None
    if cache is not None:
        key, value = cache.update(key, value, layer_idx)

    attn_module = layers[active[0]].self_attn
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(attn_implementation, eager_attention_forward)
    if insulate and len(active) == 2 and queried is None:
        prefix = hidden_states[0].shape[1]
        own = slice(0, prefix)
        backbone, _ = attention(attn_module, query[:, :, own], key[:, :, own], value[:, :, own],
                                attention_mask[:, :, own, own], dropout=0.0, scaling=attn_module.scaling)
        insulated = [torch.cat([k[:, :, own].detach(), k[:, :, prefix:]], dim=2) for k in (key, value)]
        expert, _ = attention(layers[1].self_attn, query[:, :, prefix:], *insulated, attention_mask[:, :, prefix:],
                              dropout=0.0, scaling=attn_module.scaling)
        attended = torch.cat([backbone, expert], dim=1)
    else:
        attended, _ = attention(
            attn_module, query, key, value, attention_mask, dropout=0.0, scaling=attn_module.scaling
        )
    queried_streams = [i for i in active if hidden_states[i] is not None]
    lengths = [hidden_states[i].shape[1] for i in queried_streams]
    attended = attended.reshape(*attended.shape[:2], -1).split(lengths, dim=1)

    outputs = list(hidden_states)
    for i, attended_i in zip(queried_streams, attended):
        layer = layers[i]
        h = _gated(hidden_states[i], layer.self_attn.o_proj(attended_i), gates[i])
        normed, gate = apply_norm(layer.post_attention_layernorm, h, conds[i])
        outputs[i] = _gated(h, gemma_mlp(layer.mlp, normed, in_place_mlp), gate)
    return outputs

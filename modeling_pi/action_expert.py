"""The action expert: a narrower Gemma decoder stack that reads only the suffix (state and action tokens).

Its layers are transformers' `GemmaDecoderLayer`s, used as containers of projections, MLP and norms;
the layer-by-layer computation shared with the language model lives in `joint_attention.py`. It has no
token embedding: the suffix is embedded by the flow-matching projections of the model.

π0.5 replaces every norm of the expert by adaRMS, written here because Gemma has no conditional norm:
RMS-normalise, then `Linear(cond -> 3·width)` gives scale, shift and gate; the norm returns
`norm(x)·(1+scale)+shift` and the residual branch it feeds is added back multiplied by `gate`.
"""

import torch
from torch import nn
from transformers import GemmaConfig
from transformers.models.gemma.modeling_gemma import GemmaDecoderLayer, GemmaRMSNorm


class PiAdaRMSModulation(nn.Linear):
    """cond -> (scale, shift, gate). Zero-initialised, as in the reference: a new expert starts as plain norms
    whose residual branches are closed (gate 0)."""


class PiAdaptiveRMSNorm(nn.Module):
    """RMSNorm whose scale, shift and residual gate come from a conditioning vector (the flow time): one per
    sequence [B, cond], or one per token [B, T, cond]."""

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.modulation = PiAdaRMSModulation(cond_dim, 3 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        modulation = self.modulation(cond.to(self.modulation.weight.dtype))
        if modulation.dim() == 2:  # one conditioning per sequence; else one per token [B, T, cond]
            modulation = modulation[:, None, :]
        scale, shift, gate = modulation.chunk(3, dim=-1)
        normed = normed * (1 + scale.float()) + shift.float()
        return normed.to(x.dtype), gate.to(x.dtype)


def apply_norm(norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalises `x`; returns the residual gate as well (None for a plain Gemma norm)."""
    if isinstance(norm, PiAdaptiveRMSNorm):
        if cond is None:
            raise ValueError("An adaRMS action expert needs the flow-time conditioning (adarms_cond).")
        return norm(x, cond)
    return norm(x), None


class PiActionExpert(nn.Module):
    """Decoder layers and final norm of the action expert; adaRMS norms when `adaptive` (π0.5)."""

    def __init__(self, config: GemmaConfig, adaptive: bool):
        super().__init__()
        self.layers = nn.ModuleList(GemmaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        width, eps = config.hidden_size, config.rms_norm_eps
        if adaptive:
            for layer in self.layers:
                layer.input_layernorm = PiAdaptiveRMSNorm(width, width, eps)
                layer.post_attention_layernorm = PiAdaptiveRMSNorm(width, width, eps)
            self.norm = PiAdaptiveRMSNorm(width, width, eps)
        else:
            self.norm = GemmaRMSNorm(width, eps)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype its layers compute in (the flow head around it may be float32 while they are bfloat16)."""
        return self.layers[0].self_attn.q_proj.weight.dtype

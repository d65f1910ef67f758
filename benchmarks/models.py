"""The models a benchmark compares, with one set of weights, and the inputs they are timed on.

transformers' `PI0ForConditionalGeneration` (or `PI05ForConditionalGeneration`) is built with its own
initialisation; this project's π0 (π0.5) is then built on the meta device and handed the very same
tensors (renamed by the transformers importer), so the two hold one copy of the weights between them —
which is what lets full-size models run side by side on a machine with room for one. π0-FAST, which
transformers does not implement, is built alone at the same sizes.
"""

import copy
from dataclasses import dataclass

import torch
from transformers import PI05Config, PI05ForConditionalGeneration, PI0Config, PI0ForConditionalGeneration

from configuration_pi import PiConfig
from configuration_pi.configuration_pi import _GEMMA_2B, _GEMMA_300M, _SIGLIP_SO400M
from conversion.convert_lerobot import TRANSFORMERS_NAMES, convert_state_dict, our_name, transformers_config
from modeling_pi import PiForActionGeneration

_NO_SPECIAL_TOKENS = {"pad_token_id": None, "bos_token_id": None, "eos_token_id": None}


def _gemma(width, depth, heads, head_dim, mlp, vocab=None):
    """A Gemma stack; without `vocab`, an action expert (no embedding, no special tokens)."""
    tokens = {"vocab_size": vocab} if vocab else {"vocab_size": 1, **_NO_SPECIAL_TOKENS}
    return {"model_type": "gemma", "hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": heads,
            "num_key_value_heads": 1, "head_dim": head_dim, "intermediate_size": mlp, **tokens}


def _siglip(width, depth, heads, mlp, image_size):
    return {"model_type": "siglip_vision_model", "hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": heads,
            "intermediate_size": mlp, "image_size": image_size, "patch_size": 14, "vision_use_head": False}


# name -> (language model, action expert, vision tower, action horizon); "full" is the released π0.
SIZES = {
    "tiny": (_gemma(64, 2, 4, 16, 128, 1024), _gemma(32, 2, 4, 16, 64), _siglip(32, 2, 2, 64, 28), 8),
    "small": (_gemma(256, 4, 4, 64, 1024, 32000), _gemma(128, 4, 4, 64, 512), _siglip(192, 4, 3, 768, 112), 50),
    "base": (_gemma(1024, 8, 8, 128, 4096, 32000), _gemma(512, 8, 8, 128, 2048), _siglip(384, 6, 6, 1536, 224), 50),
    "full": ({"model_type": "gemma", **_GEMMA_2B}, _GEMMA_300M, {"model_type": "siglip_vision_model", **_SIGLIP_SO400M,
                                                                  "vision_use_head": False}, 50),
}


@dataclass
class Inputs:
    """One batch of observations, in both models' forms: ours (cameras apart from the prompt) and
    transformers' (image placeholders inside `input_ids`)."""

    pixel_values: torch.Tensor
    pixel_attention_mask: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    state: torch.Tensor
    noise: torch.Tensor
    actions: torch.Tensor
    timestep: torch.Tensor
    image_token_id: int
    tokens_per_image: int

    def ours(self) -> dict:
        return {"pixel_values": self.pixel_values, "pixel_attention_mask": self.pixel_attention_mask,
                "input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def transformers(self) -> dict:
        """Every camera's placeholders, those of absent cameras masked: as transformers' processors write them
        (placeholders for present cameras only, then the prompt) wherever the absent cameras are the last."""
        batch, cameras = self.pixel_attention_mask.shape
        placeholders = torch.full((batch, cameras * self.tokens_per_image), self.image_token_id, device=self.input_ids.device)
        image_mask = self.pixel_attention_mask.repeat_interleave(self.tokens_per_image, dim=1)
        return {"pixel_values": self.pixel_values, "pixel_attention_mask": self.pixel_attention_mask,
                "input_ids": torch.cat([placeholders, self.input_ids], dim=1),
                "attention_mask": torch.cat([image_mask, self.attention_mask], dim=1).long()}


def make_inputs(config: PiConfig, batch: int, cameras: int, prompt_tokens: int, device, seed: int = 0,
                absent: int = 0) -> Inputs:
    """Random images in [-1, 1], the last `absent` cameras masked in every row (as the processor masks the
    cameras a robot lacks), a prompt of `prompt_tokens` real tokens right-padded to the config's
    `max_token_len` (as the processor pads it), state, noise, a target chunk and flow times."""
    generator = torch.Generator().manual_seed(seed)
    size, length = config.vision_config.image_size, config.max_token_len
    vocab = config.text_config.vocab_size
    input_ids = torch.randint(3, min(vocab, 1000), (batch, length), generator=generator)
    attention_mask = torch.arange(length)[None].expand(batch, -1) < prompt_tokens
    chunk = (batch, config.action_horizon, config.action_dim)
    tensors = Inputs(
        pixel_values=torch.rand(batch, cameras, 3, size, size, generator=generator) * 2 - 1,
        pixel_attention_mask=(torch.arange(cameras) < cameras - absent).repeat(batch, 1),
        input_ids=input_ids.masked_fill(~attention_mask, 0),
        attention_mask=attention_mask,
        state=torch.randn(batch, config.action_dim, generator=generator),
        noise=torch.randn(chunk, generator=generator),
        actions=torch.randn(chunk, generator=generator),
        timestep=torch.rand(batch, generator=generator),
        image_token_id=vocab,
        tokens_per_image=config.num_image_tokens,
    )
    for name, value in vars(tensors).items():
        if isinstance(value, torch.Tensor):
            setattr(tensors, name, value.to(device))
    return tensors


def _transformers(config_class, model_class, size: str, device):
    text, expert, vision, horizon = SIZES[size]
    expert = {k: v for k, v in expert.items() if k not in ("model_type", "vocab_size", *_NO_SPECIAL_TOKENS)}
    config = config_class(
        vlm_config={"text_config": text, "vision_config": vision, "projection_dim": text["hidden_size"],
                    "image_token_id": text["vocab_size"]},
        dit_config={**expert, **_NO_SPECIAL_TOKENS, "vocab_size": 1},
        chunk_size=horizon,
    )
    with torch.device(device):
        return model_class(config).eval()


def transformers_pi0(size: str, device="cpu") -> PI0ForConditionalGeneration:
    """transformers' PI0 at a named size, initialised by transformers, built on `device`."""
    return _transformers(PI0Config, PI0ForConditionalGeneration, size, device)


def transformers_pi05(size: str, device="cpu") -> PI05ForConditionalGeneration:
    """transformers' PI05 at a named size, initialised by transformers, built on `device`."""
    return _transformers(PI05Config, PI05ForConditionalGeneration, size, device)


def sharing_weights(theirs: PI0ForConditionalGeneration | PI05ForConditionalGeneration,
                    max_token_len: int | None) -> PiForActionGeneration:
    """This project's π0 (π0.5) holding the very tensors of transformers' PI0 (PI05) `theirs` (no copy)."""
    variant = theirs.config.model_type
    config = transformers_config(theirs.config.to_dict(), variant, max_token_len=max_token_len)
    config._attn_implementation = theirs.config._attn_implementation
    with torch.device("meta"):
        ours = PiForActionGeneration(config)
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), config), assign=True, strict=True)
    modules = dict(ours.named_modules())
    for name, buffer in theirs.named_buffers():  # rotary frequencies, position ids: not in a state dict
        module_name, _, attribute = our_name(name).rpartition(".")
        module = modules.get(module_name)
        if module is not None and getattr(module, attribute, None) is not None and getattr(module, attribute).is_meta:
            setattr(module, attribute, buffer)
    left = [name for name, tensor in [*ours.named_parameters(), *ours.named_buffers()] if tensor.is_meta]
    if left:
        raise RuntimeError(f"Not given by transformers' {TRANSFORMERS_NAMES[variant]}: {', '.join(left)}")
    return ours.eval()


def ours_alone(variant: str, size: str, max_token_len: int | None, device="cpu") -> PiForActionGeneration:
    """π0.5 or π0-FAST at a named size (π0.5 takes the expert above, π0-FAST no expert)."""
    text, expert, vision, horizon = SIZES[size]
    config = PiConfig(variant=variant, text_config=text, vision_config=vision, action_horizon=horizon,
                      max_token_len=max_token_len, **({"expert_config": expert} if variant != "pi0_fast" else {}))
    with torch.device(device):
        return PiForActionGeneration(config).eval()


def twin(model: PiForActionGeneration) -> PiForActionGeneration:
    """A second instance of `model` holding the same tensors (to compile one and keep the other eager)."""
    shared = {id(tensor): tensor for tensor in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo=shared)

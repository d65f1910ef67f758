"""Configuration of the π family (π0, π0.5, π0-FAST) of vision-language-action models.

A π model is a PaliGemma (SigLIP vision tower + Gemma language model) plus, for the flow-matching
variants, a smaller Gemma stack — the action expert — that shares attention with the language model
layer by layer; π0-FAST is the PaliGemma alone, writing actions as tokens. The sub-configs are
transformers' own `SiglipVisionConfig` and `GemmaConfig`; this file only adds what is specific to
acting: the variant, the action chunk, the prompt length, the camera names, the flow-matching
schedule and the token-decoding budget.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

VARIANTS = ("pi0", "pi05", "pi0_fast")
FLOW_VARIANTS = ("pi0", "pi05")
DEFAULT_IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
DEFAULT_MAX_TOKEN_LEN = {"pi0": 48, "pi05": 200, "pi0_fast": 250}
DEFAULT_ACTION_HORIZON = {"pi0": 50, "pi05": 50, "pi0_fast": 32}

# Gemma 2B, the language model of PaliGemma 3B.
_GEMMA_2B = {
    "vocab_size": 257152,
    "hidden_size": 2048,
    "intermediate_size": 16384,
    "num_hidden_layers": 18,
    "num_attention_heads": 8,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "use_bidirectional_attention": True,
}
# The 300M "Gemma" that π uses as its action expert: same depth and attention shape as Gemma 2B, so
# both stacks can attend jointly, but narrower. It reads no tokens, so it has no vocabulary of its own.
_GEMMA_300M = {
    **_GEMMA_2B,
    "vocab_size": 1,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    "hidden_size": 1024,
    "intermediate_size": 4096,
}
# SigLIP So400m/14 at 224 px, as in PaliGemma (no pooling head: π consumes all 256 patch tokens).
_SIGLIP_SO400M = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": False,
}


@strict
class PiConfig(PreTrainedConfig):
    r"""
    Configuration for [`PiForActionGeneration`]. The defaults reproduce the released full-size π0
    (or π0.5 with `variant="pi05"`).

    Args:
        variant (`str`, defaults to `"pi0"`):
            `"pi0"` (state token, action-time MLP), `"pi05"` (state in the prompt, adaRMS time
            conditioning in the action expert) or `"pi0_fast"` (no expert: actions as FAST tokens).
        vision_config (`SiglipVisionConfig` or `dict`, *optional*): the vision tower.
        text_config (`GemmaConfig` or `dict`, *optional*): the language model (PaliGemma's Gemma).
        expert_config (`GemmaConfig` or `dict`, *optional*):
            the action expert (flow variants; None for π0-FAST). Must match `text_config` in depth,
            heads, kv heads and head_dim.
        action_dim (`int`, defaults to 32): width of the (zero-padded) state and action vectors.
        action_horizon (`int`, *optional*): steps in an action chunk; 50 (flow) or 32 (FAST) by default.
        max_token_len (`int`, *optional*): prompt length; 48 (π0), 200 (π0.5) or 250 (π0-FAST) by default.
        image_keys (`list[str]`): camera names, in the order of `pixel_values`.
        num_inference_steps (`int`, defaults to 10): flow-matching solver steps at inference.
        time_beta_alpha, time_beta_beta, time_scale, time_offset (`float`):
            training flow time is `Beta(alpha, beta) * scale + offset` (t=1 is noise, t=0 is data).
        min_period, max_period (`float`): periods of the sine-cosine flow-time embedding.
        max_new_tokens (`int`, defaults to 256): π0-FAST's decoding budget.
        tie_word_embeddings (`bool`, defaults to `True`):
            π0-FAST's logits use the token embedding table, as openpi's do; False gives it an output head of
            its own (`lm_head`), as LeRobot's π0-FAST trains one. The flow variants read no logits.
        skip_position_after_prefix (`bool`, defaults to `True`):
            π0-FAST decoding: openpi gives the first generated token the position prefix length + 1, one
            past the prefix; LeRobot's π0-FAST (False) continues the positions without a gap.
        rtc_max_delay (`int`, defaults to 0):
            real-time chunking learnt in training (π0 / π0.5; `pi train --rtc-max-delay N`): each training chunk
            begins with a clean prefix of 0 to N actions, given at flow time 0 and left out of the loss, so that
            `generate_actions(prev_actions=...)` fixes those actions instead of guiding towards them. 0: not.
        knowledge_insulation (`bool`, defaults to `False`):
            π0.5 training as Physical Intelligence trains it (arXiv 2505.23705; `pi train --knowledge-insulation`):
            the backbone also learns the chunk's FAST tokens after the prompt, and the action expert reads the
            backbone through a stop-gradient. Sampling is unchanged.
    """

    model_type = "pi"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="siglip_vision_model", init_kwargs=_SIGLIP_SO400M
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="gemma", init_kwargs=_GEMMA_2B),
        "expert_config": SubConfigSpec(
            config_class=AutoConfig, model_type="gemma", init_kwargs=_GEMMA_300M, optional=True
        ),
    }

    variant: str = "pi0"
    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    expert_config: dict | PreTrainedConfig | None = None
    action_dim: int = 32
    action_horizon: int | None = None
    max_token_len: int | None = None
    image_keys: list[str] | tuple[str, ...] = DEFAULT_IMAGE_KEYS
    num_inference_steps: int = 10
    time_beta_alpha: float = 1.5
    time_beta_beta: float = 1.0
    time_scale: float = 0.999
    time_offset: float = 0.001
    min_period: float = 4e-3
    max_period: float = 4.0
    max_new_tokens: int = 256
    tie_word_embeddings: bool = True
    skip_position_after_prefix: bool = True
    rtc_max_delay: int = 0
    knowledge_insulation: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.variant not in VARIANTS:
            raise ValueError(f"Unknown π variant {self.variant!r}; expected one of {', '.join(VARIANTS)}.")
        if self.max_token_len is None:
            self.max_token_len = DEFAULT_MAX_TOKEN_LEN[self.variant]
        if self.action_horizon is None:
            self.action_horizon = DEFAULT_ACTION_HORIZON[self.variant]
        if self.variant == "pi0_fast" and self.expert_config is not None:
            raise ValueError("π0-FAST has no action expert: leave expert_config unset.")
        if self.variant in FLOW_VARIANTS and not self.tie_word_embeddings:
            raise ValueError("Only π0-FAST reads logits: the flow variants have no output head to untie.")
        if self.variant in FLOW_VARIANTS and self.expert_config is None:
            self.expert_config = {"model_type": "gemma", **_GEMMA_300M}
        self.image_keys = list(self.image_keys)
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raises `ValueError` where the values cannot make a π model. Construction runs it, and so does the model:
        values given to `from_pretrained` are set after construction."""
        self.validate_rtc()
        if self.knowledge_insulation and self.variant != "pi05":
            raise ValueError(f"knowledge_insulation is a π0.5 training mode, not {self.variant}'s.")
        self._check_architecture()

    def validate_values(self) -> None:
        """`check`, as one of transformers' class validators: `save_pretrained` runs them before it writes."""
        self.check()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """transformers' `from_dict`, then `check`: the keywords of `from_pretrained` are set after construction."""
        loaded = super().from_dict(config_dict, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).check()
        return loaded

    def validate_rtc(self) -> None:
        """`rtc_max_delay` is 0, or a flow model's clean action prefix, shorter than its chunk."""
        if not self.rtc_max_delay:
            return
        if self.variant not in FLOW_VARIANTS:
            raise ValueError(f"rtc_max_delay is a flow model's clean action prefix; {self.variant} decodes tokens and "
                             "has none.")
        if not 0 < self.rtc_max_delay < self.action_horizon:
            raise ValueError(f"rtc_max_delay is 0 (none) or a clean action prefix of 1 to action_horizon - 1 "
                             f"({self.action_horizon - 1}) steps, got {self.rtc_max_delay}.")

    @property
    def is_flow(self) -> bool:
        """π0 and π0.5 generate actions by flow matching with an action expert; π0-FAST decodes tokens."""
        return self.variant in FLOW_VARIANTS

    @property
    def use_adarms(self) -> bool:
        """π0.5 conditions every action-expert norm on the flow time (adaRMS) instead of mixing time into tokens."""
        return self.variant == "pi05"

    @property
    def num_image_tokens(self) -> int:
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    def _check_architecture(self):
        """Rejects, with a `ValueError`, configurations the joint attention or the time embedding cannot run."""
        if self.is_flow:
            self._check_expert()
        if self.vision_config.image_size % self.vision_config.patch_size:
            raise ValueError(
                f"image_size {self.vision_config.image_size} is not a multiple of patch_size "
                f"{self.vision_config.patch_size}."
            )
        for name in ("action_dim", "action_horizon", "max_token_len", "num_inference_steps", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if not self.image_keys or len(set(self.image_keys)) != len(self.image_keys):
            raise ValueError(f"image_keys must be a non-empty list of distinct camera names, got {self.image_keys}.")
        if not (self.time_beta_alpha > 0 and self.time_beta_beta > 0 and self.time_scale > 0 and self.time_offset >= 0
                and self.time_scale + self.time_offset <= 1):
            raise ValueError("Training draws flow times t ~ Beta(time_beta_alpha, time_beta_beta) * time_scale + time_offset "
                             "within (0, 1]: both Beta parameters and time_scale must be positive, time_offset at least 0, "
                             f"their sum at most 1; got {self.time_beta_alpha}, {self.time_beta_beta}, {self.time_scale}, "
                             f"{self.time_offset}.")
        if not 0 < self.min_period < self.max_period:
            raise ValueError(f"The flow-time embedding's periods need 0 < min_period < max_period, got {self.min_period} "
                             f"and {self.max_period}.")

    def _check_expert(self):
        text, expert = self.text_config, self.expert_config
        for name in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim"):
            if getattr(text, name) != getattr(expert, name):
                raise ValueError(
                    f"The action expert shares attention with the language model layer by layer, so their "
                    f"{name} must match: language model {getattr(text, name)}, expert {getattr(expert, name)}."
                )
        if expert.hidden_size % 2:
            raise ValueError(
                f"The flow-time embedding is sin/cos pairs over the expert width, which must be even "
                f"(expert hidden_size={expert.hidden_size})."
            )


__all__ = ["PiConfig"]

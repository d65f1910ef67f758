"""LoRA presets of the reference, expressed as PEFT configs.

The reference's `gemma_2b_lora` puts rank-16 adapters (alpha = rank) on the attention and MLP
projections of the language model; `gemma_300m_lora` puts rank-32 ones on the action expert's. The
Gemma weights under adapters are frozen; everything outside the Gemma stacks (vision tower, projector,
flow projections) keeps training, as in the reference — or is frozen too with `freeze_vision` for the
vision tower and projector. Which modules those are, the model says (`VISION_MODULES`,
`flow_head_modules()`), so that a head renamed there still trains here.
"""

from peft import LoraConfig, PeftModel, get_peft_model

from modeling_pi.quantization import refuse_quantized_training

PROJECTIONS = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
LORA_PRESETS = {"gemma_2b_lora": ("language_model", 16), "gemma_300m_lora": ("action_expert", 32)}


def lora_config(model, presets: tuple[str, ...] | None = None, freeze_vision: bool = False) -> LoraConfig:
    """PEFT config for `model`: by default `gemma_2b_lora` (+ `gemma_300m_lora` when the model has an expert)."""
    if presets is None:
        presets = ("gemma_2b_lora",) + (("gemma_300m_lora",) if model.action_expert is not None else ())
    unknown = [name for name in presets if name not in LORA_PRESETS]
    if unknown or not presets:
        raise ValueError(f"Unknown LoRA preset(s) {unknown}; expected some of {', '.join(LORA_PRESETS)}.")
    stacks = [LORA_PRESETS[name] for name in presets]
    if any(stack == "action_expert" for stack, _ in stacks) and model.action_expert is None:
        raise ValueError("gemma_300m_lora adapts the action expert, which π0-FAST does not have.")
    ranks = {rf"^{stack}\..*": rank for stack, rank in stacks}
    trainable = [*(() if freeze_vision else model.VISION_MODULES), *model.flow_head_modules()]
    first_rank = stacks[0][1]
    return LoraConfig(
        r=first_rank,
        lora_alpha=first_rank,
        target_modules=rf"^({'|'.join(stack for stack, _ in stacks)})\.layers\.\d+\.{PROJECTIONS}$",
        rank_pattern=ranks,
        alpha_pattern=ranks,
        modules_to_save=trainable,
        lora_dropout=0.0,
    )


def apply_lora(model, presets: tuple[str, ...] | None = None, freeze_vision: bool = False) -> PeftModel:
    """Wraps `model` with the preset adapters; only adapters and the modules outside the Gemma stacks train. A model
    with quantized weights is refused."""
    refuse_quantized_training(model)
    return get_peft_model(model, lora_config(model, presets, freeze_vision))


def set_full_finetuning(model, freeze_vision: bool = False):
    """Every parameter trains, except the vision tower and projector with `freeze_vision`, and those no loss reaches
    (`model.modules_without_gradient()`, read from the config as it is now: set `knowledge_insulation` before): the
    optimizer would hold no state for them, which a sharded checkpoint (FSDP) cannot save or resume from; left
    frozen, training is unchanged. A model with quantized weights is refused."""
    refuse_quantized_training(model)
    for name, param in model.named_parameters():
        param.requires_grad = not (freeze_vision and name.startswith(model.VISION_MODULES))
    for module in model.modules_without_gradient():
        module.requires_grad_(False)
    return model

"""Model cards for converted π checkpoints: one Jinja template per variant (`pi0.md`, `pi05.md`,
`pi0_fast.md`) extending the shared layout `pi.md`, rendered into a huggingface_hub `ModelCard` whose
metadata is a `ModelCardData`."""

import re
from importlib.resources import files

import jinja2
from huggingface_hub import ModelCard, ModelCardData

TITLES = {"pi0": "π0", "pi05": "π0.5", "pi0_fast": "π0-FAST"}
# π checkpoints start from PaliGemma 3B (224 px), whose SigLIP and Gemma weights they fine-tune.
PALIGEMMA = "google/paligemma-3b-pt-224"
DEFAULT_LICENSE = "apache-2.0"  # openpi publishes its code and checkpoints under Apache 2.0
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FunctionLoader(lambda name: files(__package__).joinpath(name).read_text(encoding="utf-8")),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def card_data(config, license: str = DEFAULT_LICENSE, base_model: str | None = PALIGEMMA) -> ModelCardData:
    """The card's metadata: what the Hub indexes (library, task, tags, lineage, license)."""
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="robotics",
        license=license,
        base_model=base_model,
        tags=["robotics", "vision-language-action", "pi", config.variant,
              "flow-matching" if config.is_flow else "fast-tokenizer"],
    )


def converted_from(source: str, source_kind: str, dtype: str) -> str:
    """The provenance sentence of a converted folder."""
    return (f"Converted from `{source}` ({source_kind}) to the Hugging Face Transformers format of the π model "
            f"family (`model_type: pi`). The weights are the original ones, mapped tensor by tensor and stored as {dtype}; "
            "the conversion is strict: every source tensor maps onto exactly one parameter of the right shape and every "
            "parameter is filled, otherwise nothing is written.")


def render_model_card(
    config,
    num_parameters: int,
    repo_id: str,
    provenance: str,
    license: str = DEFAULT_LICENSE,
    base_model: str | None = PALIGEMMA,
    norm_stats=None,
    processor=None,
) -> ModelCard:
    """The README.md of a π folder, filled from its config; `provenance` says where its weights come from. A
    `processor` that follows LeRobot's conventions is described as such (the templates give openpi's)."""
    cameras = config.image_keys
    data = card_data(config, license, base_model)
    text = _TEMPLATES.get_template(f"{config.variant}.md").render(
        card_data=data.to_yaml(),
        title=f"{TITLES[config.variant]} ({repo_id})",
        provenance=provenance,
        license=license,
        repo_id=repo_id,
        variant=config.variant,
        num_parameters=f"{num_parameters:,}",
        image_keys=", ".join(f"`{key}`" for key in cameras),
        num_cameras=len(cameras),
        first_camera=cameras[0],
        camera_example=", ".join(f'"{key}": {key}_image' for key in cameras[:2]),
        image_size=config.vision_config.image_size,
        state_row=f"[B, {config.action_dim}], normalised" if config.variant == "pi0" else "in the prompt (256 bins)",
        action_horizon=config.action_horizon,
        action_dim=config.action_dim,
        max_token_len=config.max_token_len,
        num_inference_steps=config.num_inference_steps,
        max_new_tokens=config.max_new_tokens,
        inference_name="flow-matching steps" if config.is_flow else "decoding budget (new tokens)",
        inference_value=config.num_inference_steps if config.is_flow else config.max_new_tokens,
        stats_sentence=(
            f"This folder's processor carries the statistics for: {', '.join(norm_stats)}."
            if norm_stats
            else "This folder carries no normalisation statistics: give the processor the statistics of your "
            "robot's data (`pi train` computes them), or feed already normalised inputs."
        ),
        conventions_sentence=_conventions_sentence(processor),
    )
    return ModelCard(text)


def _conventions_sentence(processor) -> str:
    if processor is None or processor.conventions != "lerobot":
        return ""
    mode = {"zscore": "z-score (`(x - mean) / (std + 1e-8)`)", "quantile": "quantile (`2 (x - q01) / (q99 - q01) - 1`)"}
    return (f"This policy was trained in LeRobot, and its processor follows LeRobot's conventions rather than the "
            f"above: {mode[processor.norm_mode]} normalisation, the task text as LeRobot tokenises it, images resized "
            "in float (bilinear, then padded)" + (", one more BOS after the prompt and LeRobot's lenient decoding of "
                                                 "the action tokens." if processor.variant == "pi0_fast" else "."))


def retarget_card(text: str, old_id: str, new_id: str) -> str:
    """The card with its title and usage examples naming `new_id` where they named `old_id`."""
    if old_id == new_id:
        return text
    old = re.escape(old_id)
    text = re.sub(rf'"{old}"', f'"{new_id}"', text)
    text = re.sub(rf"--model {old}(?=\s)", f"--model {new_id}", text)
    return re.sub(rf"^(# .*)\({old}\)$", rf"\1({new_id})", text, flags=re.MULTILINE)

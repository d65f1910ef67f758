"""Model card templates for converted π checkpoints; `render_model_card` fills one from a config."""

from importlib.resources import files
from string import Template

DESCRIPTIONS = {
    "pi0": "π0, Physical Intelligence's flow-matching vision-language-action model (PaliGemma + action expert)",
    "pi05": "π0.5, Physical Intelligence's flow-matching vision-language-action model with adaRMS time "
    "conditioning and the robot state in the prompt",
    "pi0_fast": "π0-FAST, Physical Intelligence's autoregressive vision-language-action model, which writes "
    "action chunks as FAST tokens (DCT + BPE)",
}
TITLES = {"pi0": "π0", "pi05": "π0.5", "pi0_fast": "π0-FAST"}


def render_model_card(config, num_parameters: int, source: str, repo_id: str) -> str:
    """The README.md of a converted folder: what the model is, where it came from, how to call it."""
    takes_state = config.variant == "pi0"
    size = config.vision_config.image_size
    return Template(files(__package__).joinpath("pi.md").read_text(encoding="utf-8")).substitute(
        title=f"{TITLES[config.variant]} ({repo_id})",
        description=DESCRIPTIONS[config.variant],
        source=source,
        repo_id=repo_id,
        variant=config.variant,
        dtype=str(config.dtype).removeprefix("torch."),
        num_parameters=f"{num_parameters:,}",
        image_keys=", ".join(f"`{key}`" for key in config.image_keys),
        num_cameras=len(config.image_keys),
        image_size=size,
        action_horizon=config.action_horizon,
        action_dim=config.action_dim,
        max_token_len=config.max_token_len,
        method_tag="flow-matching" if config.is_flow else "fast-tokenizer",
        inference_name="flow-matching steps at inference" if config.is_flow else "decoding budget (new tokens)",
        inference_value=config.num_inference_steps if config.is_flow else config.max_new_tokens,
        output_sentence=(
            f"The output is a normalised action chunk [B, {config.action_horizon}, {config.action_dim}]; "
            "un-normalise it with the statistics the policy was trained with."
            if config.is_flow
            else "The output is the generated token ids [B, T]: the FAST ids between \"Action: \" and \"|\" decode "
            "(FAST tokenizer) to a normalised action chunk."
        ),
        state_argument=", state=state" if takes_state else "",
        state_line=f", and `state` [B, {config.action_dim}]" if takes_state else " (the state is written into the prompt)",
    )

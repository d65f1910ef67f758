"""Model cards for π folders: one Jinja template per variant (`pi0.md`, `pi05.md`, `pi0_fast.md`) extending the
shared layout `pi.md`, rendered into a huggingface_hub `ModelCard` whose metadata is a `ModelCardData`.

Written by hand because a card is the first thing a newcomer runs, so it says only what the folder shows:

- Every python example is filled from the folder (its cameras, image size, state and action dims, whether it has
  a processor, a robot layout, remote code) and builds its own inputs, so that it runs as written against the
  name the folder is published under (tests/test_model_cards.py executes them).
- Sizes come from the config: "PaliGemma 3B" and "a 300M-parameter action expert" only at those sizes, widths
  and depths otherwise.
- A license and a base model appear when the caller gives them, or when the source says them: a π model of
  PaliGemma 3B's exact architecture (SigLIP So400m/14 at 224 px, Gemma 2B with its 257,152-token vocabulary,
  for π0 / π0.5 the Gemma 300M expert) is one of Physical Intelligence's checkpoints or a fine-tune of one
  (openpi's and LeRobot's releases): all of them start from PaliGemma 3B, and PaliGemma's derivatives are bound
  by the Gemma Terms of Use (Hub license id `gemma`). A model of any other size (a test model, the demo's
  policy trained from scratch) has no known lineage, and its card asserts none.
"""

import json
import re
from importlib.resources import files

import jinja2
import numpy as np
from huggingface_hub import ModelCard, ModelCardData

from configuration_pi.configuration_pi import _GEMMA_2B, _GEMMA_300M, _SIGLIP_SO400M
from processing_pi.processing_pi import DEFAULT_NORM_MODE

TITLES = {"pi0": "π0", "pi05": "π0.5", "pi0_fast": "π0-FAST"}
# π checkpoints start from PaliGemma 3B (224 px), whose SigLIP and Gemma weights they fine-tune.
PALIGEMMA = "google/paligemma-3b-pt-224"
GEMMA_LICENSE = "gemma"  # the Hub's id of the Gemma Terms of Use, which bind PaliGemma's derivatives
# No license is asserted unless given or known from the source (`known_lineage`).
DEFAULT_LICENSE = None
# What the folder's own code needs where pi-transformers is not installed (setup.cfg's pins for these three).
REMOTE_CODE_REQUIREMENTS = ("transformers>=5.24,<6", "torch>=2.4", "pillow")
EXAMPLE_PROMPT = "pick up the cube"
_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers")
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FunctionLoader(lambda name: files(__package__).joinpath(name).read_text(encoding="utf-8")),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def _same_shape(sub_config, reference: dict, keys=_SHAPE_KEYS) -> bool:
    return sub_config is not None and all(getattr(sub_config, key) == reference[key] for key in keys)


def is_paligemma_3b(config) -> bool:
    """The language model and vision tower are PaliGemma 3B's at 224 px (and the expert, if any, Gemma 300M)."""
    vision_keys = (*_SHAPE_KEYS, "image_size", "patch_size")
    return (_same_shape(config.text_config, _GEMMA_2B, (*_SHAPE_KEYS, "vocab_size"))
            and _same_shape(config.vision_config, _SIGLIP_SO400M, vision_keys)
            and (not config.is_flow or _same_shape(config.expert_config, _GEMMA_300M)))


def known_lineage(config) -> tuple[str | None, str | None]:
    """(license, base model) that the architecture tells (module docstring); (None, None) when it tells nothing."""
    return (GEMMA_LICENSE, PALIGEMMA) if is_paligemma_3b(config) else (None, None)


def card_data(config, license: str | None = None, base_model: str | None = None) -> ModelCardData:
    """The card's metadata: what the Hub indexes (library, task, tags, and lineage and license where known)."""
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="robotics",
        license=license,
        base_model=base_model,
        tags=["robotics", "vision-language-action", "pi", config.variant,
              "flow-matching" if config.is_flow else "fast-tokenizer"],
    )


def converted_from(source: str, source_kind: str, dtype: str, merged_lora: bool = False) -> str:
    """The provenance sentence of a converted folder; `merged_lora`: its LoRA adapters were added into the weights."""
    merged = (", with the checkpoint's LoRA adapters added into the weights they adapt (the model loads with no "
              "adapter)" if merged_lora else "")
    return (f"Converted from `{source}` ({source_kind}) to the Hugging Face Transformers format of the π model "
            f"family (`model_type: pi`). The weights are the original ones, mapped tensor by tensor{merged} and stored "
            f"as {dtype}; the conversion is strict: every source tensor maps onto exactly one parameter of the right shape "
            "and every parameter is filled, otherwise nothing is written.")


def _layers(sub_config) -> str:
    return f"{sub_config.num_hidden_layers} layers of width {sub_config.hidden_size}"


def architecture(config) -> dict[str, str]:
    """The description's phrases for the backbone and the action expert, from the config's sizes."""
    if is_paligemma_3b(config):
        return {"backbone": "a PaliGemma 3B (SigLIP So400m/14 + Gemma 2B)",
                "expert": "a 300M-parameter action expert (Gemma 300M)"}
    backbone = (f"a PaliGemma-style backbone at its own size (SigLIP: {_layers(config.vision_config)}; "
                f"Gemma: {_layers(config.text_config)})")
    expert = f"an action expert (Gemma: {_layers(config.expert_config)})" if config.is_flow else ""
    return {"backbone": backbone, "expert": expert}


def _state_dims(config, processor, prompt: str) -> int:
    """The state the examples pass: the robot's dims where the folder knows them, else as many as the model takes
    (its padded width, or for a state written into the prompt, as many as the prompt holds beside the example's)."""
    if processor is not None and processor.norm_stats is not None:
        return processor.norm_stats.state.dim
    if processor is not None and processor.robot is not None and processor.robot.state_dim:
        return processor.robot.state_dim
    if processor is None or not processor.discrete_state_input:
        return config.action_dim
    return next((dims for dims in range(config.action_dim, 0, -1) if _prompt_holds(processor, prompt, dims)), 1)


def _prompt_holds(processor, prompt: str, state_dims: int) -> bool:
    blank = {processor.image_keys[0]: np.zeros((8, 8, 3), np.uint8)}
    try:
        processor(images=blank, prompt=prompt, state=np.zeros(state_dims))
    except ValueError:  # the prompt with that state is longer than max_token_len
        return False
    return True


def _decoding_options(config, processor, state_dims: int) -> dict:
    """The shape of one example's chunk as `post_process` returns it, and, for a π0-FAST folder whose processor
    does not record what its tokens decode to (no statistics, no robot), the options the examples give it: the
    model's horizon and as many action dims as the state's, with the note that says so."""
    robot_dims = processor.robot_action_dim_source()[0] if processor is not None else None
    if processor is None or config.is_flow:
        return {"chunk_shape": [1, config.action_horizon, robot_dims or config.action_dim], "processor_options": "",
                "decoding_note": ""}
    missing = {}
    if robot_dims is None:
        missing["robot_action_dim"] = ("the robot's action dims", state_dims)
    if not (processor.action_horizon or processor.action_tokenizer.time_horizon):
        missing["action_horizon"] = ("the chunk's length", config.action_horizon)
    horizon = processor.action_horizon or processor.action_tokenizer.time_horizon or config.action_horizon
    return {"chunk_shape": [1, horizon, robot_dims or state_dims],
            "processor_options": "".join(f", {name}={value}" for name, (_, value) in missing.items()),
            "decoding_note": " and ".join(what for what, _ in missing.values())}


def usage(config, processor, repo_id: str, remote_code: bool, prompt: str = EXAMPLE_PROMPT) -> dict:
    """What the card's examples need: the folder's cameras, sizes and dims, and which examples apply."""
    robot = processor.robot if processor is not None else None
    state_dims = _state_dims(config, processor, prompt)
    decoding = _decoding_options(config, processor, state_dims)
    return {
        **decoding,
        "repo_id": repo_id,
        "has_processor": processor is not None,
        "remote_code": remote_code,
        "requirements": " ".join(f'"{r}"' if set(r) & set("<>,") else r for r in REMOTE_CODE_REQUIREMENTS),
        "camera_list": json.dumps(list(config.image_keys)),
        "first_camera": config.image_keys[0],
        "image_size": config.vision_config.image_size,
        "state_dims": state_dims,
        "state_csv": ",".join(["0"] * state_dims),
        "state_units": _state_units(processor),
        "prompt": prompt,
        "pipeline_shape": str(tuple(decoding["chunk_shape"][1:])),
        "bos_token_id": config.text_config.bos_token_id,
        "robot": None if robot is None else {
            "name": robot.name,
            "cameras": ", ".join(f"`{key}`" for key in robot.cameras.values() if key is not None),
            "state_keys": ", ".join(f"`{key}`" for key in robot.state_keys),
            "prompt_key": robot.prompt_key,
        },
    }


def _state_units(processor) -> str:
    if processor is None or processor.norm_stats is None:
        return "already normalised (this folder carries no statistics)"
    if processor.robot is not None:
        return "as its layout reads it from an observation (processor.robot.state(obs))"
    return "in its own units"


def _lineage_sentence(license: str | None, base_model: str | None) -> str:
    parts = []
    if base_model:
        parts.append(f"It is derived from [`{base_model}`](https://huggingface.co/{base_model})"
                     + (", and as a PaliGemma derivative is subject to the [Gemma Terms of Use]"
                        "(https://ai.google.dev/gemma/terms)." if base_model == PALIGEMMA else "."))
    if license:
        parts.append(f"License: `{license}`.")
    else:
        parts.append("No license is declared for these weights: none was given (`--license`) and none is known "
                     "from their source.")
    return " ".join(parts)


def render_model_card(
    config,
    num_parameters: int,
    repo_id: str,
    provenance: str,
    license: str | None = DEFAULT_LICENSE,
    base_model: str | None = None,
    norm_stats=None,
    processor=None,
    remote_code: bool = True,
    example_prompt: str = EXAMPLE_PROMPT,
) -> ModelCard:
    """The README.md of a π folder, filled from its config; `provenance` says where its weights come from.
    `license` and `base_model` default to what the architecture tells (`known_lineage`). `processor`: the folder's
    (None: it has none, and the examples feed the model tensors); one that follows LeRobot's conventions is
    described as such (the templates give openpi's). `remote_code`: whether the folder carries its own code
    (`conversion.remote_code`), which the card then shows loading with transformers alone. `example_prompt`: the
    instruction the examples give."""
    known_license, known_base = known_lineage(config)
    license, base_model = license or known_license, base_model or known_base
    cameras = config.image_keys
    state_in_prompt = processor.discrete_state_input if processor is not None else config.variant != "pi0"
    text = _TEMPLATES.get_template(f"{config.variant}.md").render(
        card_data=card_data(config, license, base_model).to_yaml(),
        title=f"{TITLES[config.variant]} ({repo_id})",
        provenance=provenance,
        lineage_sentence=_lineage_sentence(license, base_model),
        variant=config.variant,
        num_parameters=f"{num_parameters:,}",
        image_keys=", ".join(f"`{key}`" for key in cameras),
        num_cameras=len(cameras),
        state_row=_state_row(config, state_in_prompt),
        state_in_prompt=state_in_prompt,
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
        norm_formula=NORM_FORMULAS[processor.norm_mode if processor is not None else DEFAULT_NORM_MODE[config.variant]],
        **architecture(config),
        **usage(config, processor, repo_id, remote_code, example_prompt),
    )
    return ModelCard(text)


NORM_FORMULAS = {"zscore": "z-score: `(x - mean) / (std + 1e-6)`",
                 "quantile": "quantile: `(x - q01) / (q99 - q01 + 1e-6) * 2 - 1`"}


def _state_row(config, state_in_prompt: bool) -> str:
    if state_in_prompt:
        return "in the prompt (256 bins)"
    return f"[B, {config.action_dim}], normalised" if config.variant == "pi0" else "not read (trained without it in the prompt)"


def _conventions_sentence(processor) -> str:
    if processor is None or processor.conventions != "lerobot":
        return ""
    mode = {"zscore": "z-score (`(x - mean) / (std + 1e-8)`)", "quantile": "quantile (`2 (x - q01) / (q99 - q01) - 1`)"}
    return (f"This policy was trained in LeRobot, and its processor follows LeRobot's conventions rather than the "
            f"above: {mode[processor.norm_mode]} normalisation, the task text as LeRobot tokenises it, images resized "
            "in float (bilinear, then padded)" + (", one more BOS after the prompt and LeRobot's lenient decoding of "
                                                 "the action tokens." if processor.variant == "pi0_fast" else "."))


def retarget_card(text: str, new_id: str) -> str:
    """The card with its title and usage examples naming `new_id` where they named the model its title names
    ("# π0 (NAME)"): the folder it was written into, or a repository pushed to before. A card with no such title
    is returned as it is."""
    title = re.search(r"^# .*\((.+)\)$", text, flags=re.MULTILINE)
    if title is None or title[1] == new_id:
        return text
    old = re.escape(title[1])
    text = re.sub(rf'(?<=[(=`])"{old}"', f'"{new_id}"', text)  # from_pretrained("…", model="…", `"…"`: not a camera
    text = re.sub(rf"--model {old}(?=[\s`])", f"--model {new_id}", text)
    return re.sub(rf"^(# .*)\({old}\)$", rf"\1({new_id})", text, flags=re.MULTILINE)

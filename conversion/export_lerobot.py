"""π folders -> LeRobot 0.6 policy folders, so that a model converted or fine-tuned here runs in LeRobot's tools.

    pi export lerobot FOLDER OUT [--allow-custom-sizes]

FOLDER is a folder `pi convert ...` or `pi train` wrote (config.json, safetensors weights, processor_config.json
with the normalisation statistics). OUT gets what LeRobot's `lerobot-train` saves as `pretrained_model/`, and
what `PI0Policy` / `PI05Policy` / `PI0FastPolicy.from_pretrained` and `PolicyProcessorPipeline.from_pretrained`
read:

- `config.json`: LeRobot's policy config (`"type"`), with the cameras as `observation.images.<camera>` features,
  the robot's state and action dims, the chunk, prompt length, flow schedule or FAST decoding budget, and the
  normalisation mode (z-score -> MEAN_STD, quantile -> QUANTILES).
- `model.safetensors`: one file (LeRobot reads no shards) under LeRobot's names, the inverse of
  `convert_lerobot.our_name`: PaliGemma under `model.paligemma_with_expert.paligemma.`, the action expert under
  `model.paligemma_with_expert.gemma_expert.model.`, π0.5's adaRMS `*.modulation.` as `*.dense.`.
- `policy_preprocessor.json`, `policy_postprocessor.json` and their normaliser safetensors: the step lists LeRobot
  0.6.1's `make_pi0_pre_post_processors` (and the π0.5 / π0-FAST ones) save, with the statistics we have
  (`observation.state.mean`, ..., `action.q99`). Statistics we lack (min, max, q10 ...) are left out: LeRobot's
  normaliser reads only those of its mode. They are stored in float64, our precision; LeRobot loads them as
  float32.

Tensors LeRobot's model has and ours does not: PaliGemma's `lm_head` (π0 and π0.5 never read it; π0-FAST's is
the tied embedding unless the model has its own) and the action expert's `lm_head`, which LeRobot never reads.
Every one is written, because LeRobot loads the state dict strictly but catches the failure and carries on
with random weights.

LeRobot builds its models from a fixed table (Gemma 2B and 300M, SigLIP So400m at any square size for π0 / π0.5
and at 224 for π0-FAST, PaliGemma's 257152-token vocabulary), ignoring the tensors' shapes, so a model of other
sizes cannot be loaded by unpatched LeRobot: it is refused unless `allow_custom_sizes` (for tests and patched
LeRobot). Written by hand: LeRobot's folder layout is its own, and LeRobot is not a dependency of this project.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from configuration_pi import PiConfig
from configuration_pi.configuration_pi import _GEMMA_2B, _GEMMA_300M, _SIGLIP_SO400M
from conversion.convert_lerobot import (EMBEDDING, IMAGE_PREFIX, LEROBOT_QUERY_HEADS, check_source_kind,
                                       load_safetensors, source_kind)
from conversion.hf_folder import ConversionError, check_complete, check_output, staged_folder, weights_dtype
from processing_pi import PiProcessor
from processing_pi.processing_pi import PROCESSOR_CONFIG
from processing_pi.prompts import LEROBOT_ACTION_TOKENS

JOB = "pi export lerobot"
POLICY_PREFIX = "model."  # LeRobot's policy wrapper
_PREFIXES = [  # ours -> LeRobot's (below the policy prefix), first match wins
    ("vision_tower.", "paligemma_with_expert.paligemma.model.vision_tower.vision_model."),
    ("multi_modal_projector.", "paligemma_with_expert.paligemma.model.multi_modal_projector.linear."),
    ("language_model.", "paligemma_with_expert.paligemma.model.language_model."),
    ("lm_head.", "paligemma_with_expert.paligemma.lm_head."),
    ("action_expert.", "paligemma_with_expert.gemma_expert.model."),
]
PALIGEMMA_HEAD = f"{POLICY_PREFIX}paligemma_with_expert.paligemma.lm_head.weight"
EXPERT_HEAD = f"{POLICY_PREFIX}paligemma_with_expert.gemma_expert.lm_head.weight"

# LeRobot's model table (`get_gemma_config`, and the SigLIP So400m / vocabulary it hard-codes): openpi's sizes.
GEMMA_VARIANTS = {"gemma_2b": _GEMMA_2B, "gemma_300m": _GEMMA_300M}
GEMMA_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "head_dim")
SIGLIP_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size")
LEROBOT_VOCAB = _GEMMA_2B["vocab_size"]
DEFAULT_VARIANTS = ("gemma_2b", "gemma_300m")  # LeRobot's defaults, named where the sizes are custom

# LeRobot's feature keys, normaliser and tokenizers
STATE, ACTION = "observation.state", "action"
NORM_MAPPING = {"zscore": "MEAN_STD", "quantile": "QUANTILES"}  # the two of LeRobot's modes that read back as ours
STAT_KEYS = {"state": STATE, "actions": ACTION}
NORMALISER_EPS = 1e-8  # LeRobot's NormalizerProcessorStep default
PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"  # the Hub names LeRobot's π processors load
FAST_TOKENIZER = "lerobot/fast-action-tokenizer"
PREPROCESSOR, POSTPROCESSOR = "policy_preprocessor", "policy_postprocessor"
STATE_STEPS = {"pi05": "pi05_prepare_state_tokenizer_processor_step",
               "pi0_fast": "pi0_fast_prepare_state_tokenizer_processor_step"}


# ---- weights ------------------------------------------------------------------------------------------


def lerobot_name(name: str) -> str:
    """Our parameter name -> LeRobot's (the inverse of `convert_lerobot.our_name`, π0.5's rename included)."""
    for ours, theirs in _PREFIXES:
        if name.startswith(ours):
            name = theirs + name.removeprefix(ours)
            break
    return POLICY_PREFIX + name.replace(".modulation.", ".dense.")


def lerobot_state_dict(state_dict: dict[str, torch.Tensor], config: PiConfig) -> dict[str, torch.Tensor]:
    """Our weights under LeRobot's names, plus the heads LeRobot's model has: PaliGemma's `lm_head` (the tied
    embedding, or π0-FAST's own head where the model has one) and, for π0 / π0.5, the action expert's."""
    tensors = {lerobot_name(name): tensor for name, tensor in state_dict.items()}
    if PALIGEMMA_HEAD not in tensors:  # tied: LeRobot keeps its own copy
        tensors[PALIGEMMA_HEAD] = state_dict[EMBEDDING].clone()
    # LeRobot's loader copies `lm_head` onto the embedding, then loads the embedding's own tensor over it (the file's
    # keys come sorted, the head first): an untied π0-FAST keeps both (checked against LeRobot 0.6.1).
    if config.is_flow:
        # LeRobot's action expert is a causal LM whose head it never reads and we do not keep; its strict
        # load still needs the tensor, so it is written as zeros ([vocabulary, expert width]).
        embedding = state_dict[EMBEDDING]
        tensors[EXPERT_HEAD] = torch.zeros(embedding.shape[0], config.expert_config.hidden_size, dtype=embedding.dtype,
                                           device=embedding.device)
    return tensors


# ---- what LeRobot can build -----------------------------------------------------------------------------


def _describe(sub_config, fields: tuple[str, ...]) -> str:
    return ", ".join(f"{name} {getattr(sub_config, name)}" for name in fields)


def gemma_variant(sub_config) -> str | None:
    """LeRobot's name for a Gemma stack of these sizes, or None."""
    return next((name for name, sizes in GEMMA_VARIANTS.items()
                 if all(getattr(sub_config, field) == sizes[field] for field in GEMMA_SIZES)), None)


def check_head_count(config: PiConfig, path: Path) -> None:
    """LeRobot builds every Gemma stack with 8 query heads (its π0 / π0.5 attention reshapes to 8), and a LeRobot
    folder records no head count: a model with another cannot be carried, even to a patched LeRobot."""
    stacks = [("language model", config.text_config)] + ([("action expert", config.expert_config)] if config.is_flow else [])
    for stack, sub_config in stacks:
        if sub_config.num_attention_heads != LEROBOT_QUERY_HEADS:
            raise ConversionError(
                f"{path}: the {stack} has {sub_config.num_attention_heads} query heads (num_attention_heads); "
                f"LeRobot's π models have {LEROBOT_QUERY_HEADS} (its attention reshapes to that many, and its "
                "folders do not record a head count), so this model cannot be exported to LeRobot.")


def lerobot_variants(config: PiConfig) -> tuple[dict[str, str], dict[str, str]]:
    """LeRobot's `paligemma_variant` (and `action_expert_variant`) for the model, and the parts of the model that
    LeRobot's table cannot build, each with its sizes (none when unpatched LeRobot loads it)."""
    unbuildable = {}
    names = {"paligemma_variant": gemma_variant(config.text_config)}
    if names["paligemma_variant"] is None:
        unbuildable["language model"] = _describe(config.text_config, GEMMA_SIZES)
    if config.text_config.vocab_size != LEROBOT_VOCAB:
        unbuildable["vocabulary"] = f"{config.text_config.vocab_size} tokens, LeRobot's {LEROBOT_VOCAB}"
    if config.is_flow:
        names["action_expert_variant"] = gemma_variant(config.expert_config)
        if names["action_expert_variant"] is None:
            unbuildable["action expert"] = _describe(config.expert_config, GEMMA_SIZES)
    vision = config.vision_config
    if any(getattr(vision, field) != _SIGLIP_SO400M[field] for field in SIGLIP_SIZES):
        unbuildable["vision tower"] = f"{_describe(vision, SIGLIP_SIZES)}; LeRobot's is SigLIP So400m"
    if not config.is_flow and vision.image_size != _SIGLIP_SO400M["image_size"]:
        # LeRobot's π0 / π0.5 build SigLIP at `image_resolution`; its π0-FAST always at SigLIP's own size
        unbuildable["image size"] = f"{vision.image_size} px; LeRobot's π0-FAST builds SigLIP at {_SIGLIP_SO400M['image_size']}"
    for key, default in zip(("paligemma_variant", "action_expert_variant"), DEFAULT_VARIANTS):
        if key in names and names[key] is None:
            names[key] = default
    return names, unbuildable


# ---- the robot and its statistics ---------------------------------------------------------------------


def robot_dims(processor: PiProcessor, path: Path) -> tuple[int, int]:
    """The robot's own state and action dims (LeRobot's `observation.state` and `action` shapes)."""
    stats, robot = processor.norm_stats, processor.robot
    state = (stats.state.dim if stats and stats.state else None) or (robot.state_dim if robot else None)
    action = processor.robot_action_dim_source()[0]
    missing = [name for name, dim in (("state", state), ("action", action)) if not dim]
    if missing:
        raise ConversionError(
            f"{path}: the robot's {' and '.join(missing)} dims are unknown (no norm_stats entry for them, no "
            "robot_action_dim / robot layout): LeRobot's config needs them. Convert or train the folder with its "
            "normalisation statistics.")
    return state, action


def check_robot_layout(processor: PiProcessor, path: Path) -> None:
    """Refuses processors whose pre-processing LeRobot's pipeline has no step for."""
    robot = processor.robot
    if robot is not None and (robot.adapt_to_pi or any(robot.delta_action_mask or ())):
        raise ConversionError(
            f"{path}: the robot layout converts the robot's units (adapt_to_pi) or predicts actions relative to the "
            "state (delta_action_mask); LeRobot's π pipelines have no such step, so the exported policy would read "
            "and command the robot wrongly.")
    if processor.discrete_state_input != (processor.variant != "pi0"):
        raise ConversionError(
            f"{path}: discrete_state_input is {str(processor.discrete_state_input).lower()}; LeRobot's π0.5 and "
            "π0-FAST always write the state into the prompt, and its π0 never does.")


def normaliser_stats(processor: PiProcessor, dims: tuple[int, int]) -> dict[str, torch.Tensor]:
    """`observation.state.<stat>` / `action.<stat>` for the statistics we have, cut to the robot's dims."""
    if processor.norm_stats is None:
        return {}
    stats = processor.norm_stats.cut(*dims)
    return {f"{STAT_KEYS[ours]}.{name}": torch.from_numpy(value).double()
            for ours in STAT_KEYS if getattr(stats, ours) is not None
            for name, value in vars(getattr(stats, ours)).items() if value is not None}


# ---- LeRobot's config and processor pipelines ------------------------------------------------------------


def features(config: PiConfig, dims: tuple[int, int]) -> tuple[dict, dict]:
    """LeRobot's input features (cameras, state) and output features (action)."""
    size = config.vision_config.image_size
    inputs = {f"{IMAGE_PREFIX}{camera}": {"type": "VISUAL", "shape": [3, size, size]} for camera in config.image_keys}
    inputs[STATE] = {"type": "STATE", "shape": [dims[0]]}
    return inputs, {ACTION: {"type": "ACTION", "shape": [dims[1]]}}


def norm_map(processor: PiProcessor) -> dict[str, str]:
    mode = NORM_MAPPING[processor.norm_mode]
    return {"VISUAL": "IDENTITY", "STATE": mode, "ACTION": mode}


def lerobot_dtype(state_dict: dict[str, torch.Tensor]) -> str:
    """LeRobot's `dtype` (its compute precision): bfloat16 for a bfloat16 model, else float32."""
    return "bfloat16" if weights_dtype(state_dict) == torch.bfloat16 else "float32"


def lerobot_config(config: PiConfig, processor: PiProcessor, dims: tuple[int, int], names: dict, dtype: str) -> dict:
    """LeRobot's policy config.json; the fields not written take LeRobot's defaults (optimizer, device ...)."""
    inputs, outputs = features(config, dims)
    settings = {
        "type": config.variant,
        "input_features": inputs,
        "output_features": outputs,
        **names,
        "dtype": dtype,
        "chunk_size": config.action_horizon,
        "n_action_steps": config.action_horizon,
        "max_state_dim": config.action_dim,
        "max_action_dim": config.action_dim,
        "image_resolution": [config.vision_config.image_size] * 2,
        "tokenizer_max_length": config.max_token_len,
        "normalization_mapping": norm_map(processor),
    }
    if config.is_flow:
        settings.update(
            num_inference_steps=config.num_inference_steps,
            time_sampling_beta_alpha=config.time_beta_alpha,
            time_sampling_beta_beta=config.time_beta_beta,
            time_sampling_scale=config.time_scale,
            time_sampling_offset=config.time_offset,
            min_period=config.min_period,
            max_period=config.max_period,
        )
    else:
        # the training targets' length, as the processor writes them under LeRobot's conventions; decoding's own budget
        settings.update(max_action_tokens=LEROBOT_ACTION_TOKENS, max_decoding_steps=config.max_new_tokens,
                        text_tokenizer_name=PALIGEMMA_TOKENIZER, action_tokenizer_name=FAST_TOKENIZER)
    return settings


def _step(registry_name: str, config: dict | None = None) -> dict:
    return {"registry_name": registry_name, "config": config or {}}


def _normaliser(registry_name: str, features_: dict, processor: PiProcessor) -> dict:
    return _step(registry_name, {"eps": NORMALISER_EPS, "features": features_, "norm_map": norm_map(processor)})


def preprocessor_steps(config: PiConfig, processor: PiProcessor, dims: tuple[int, int]) -> list[dict]:
    """The step list LeRobot 0.6.1 saves for the variant's pre-processor (its `make_*_pre_post_processors`)."""
    inputs, outputs = features(config, dims)
    tokenizer = _step("tokenizer_processor", {"max_length": config.max_token_len, "task_key": "task",
                                              "padding_side": "right", "padding": "max_length", "truncation": True,
                                              "tokenizer_name": PALIGEMMA_TOKENIZER})
    device = _step("device_processor", {"device": "cpu", "float_dtype": None})
    relative = _step("relative_actions_processor", {"enabled": False, "exclude_joints": [], "action_names": None})
    normaliser = _normaliser("normalizer_processor", {**inputs, **outputs}, processor)
    start = [_step("rename_observations_processor", {"rename_map": {}}), _step("to_batch_processor")]
    if config.variant == "pi0":
        return [*start, _step("pi0_new_line_processor"), tokenizer, device, relative, normaliser]
    steps = [*start, relative, normaliser, _step(STATE_STEPS[config.variant]), tokenizer]
    if config.variant == "pi0_fast":
        steps.append(_step("action_tokenizer_processor", {"trust_remote_code": True,
                                                          "max_action_tokens": LEROBOT_ACTION_TOKENS,
                                                          "action_tokenizer_name": FAST_TOKENIZER}))
    return [*steps, device]


def postprocessor_steps(config: PiConfig, processor: PiProcessor, dims: tuple[int, int]) -> list[dict]:
    _, outputs = features(config, dims)
    return [_normaliser("unnormalizer_processor", outputs, processor), _step("absolute_actions_processor", {"enabled": False}),
            _step("device_processor", {"device": "cpu", "float_dtype": None})]


def write_pipeline(folder: Path, name: str, steps: list[dict], stats: dict[str, torch.Tensor]) -> None:
    """`<name>.json` and, for its (un)normaliser step, `<name>_step_<k>_<registry name>.safetensors`."""
    for index, step in enumerate(steps):
        if step["registry_name"] in ("normalizer_processor", "unnormalizer_processor"):
            step["state_file"] = f"{name}_step_{index}_{step['registry_name']}.safetensors"
            save_file(stats, folder / step["state_file"])
    (folder / f"{name}.json").write_text(json.dumps({"name": name, "steps": steps}, indent=2) + "\n")


# ---- reading ours, writing theirs -----------------------------------------------------------------------


def read_folder(folder: Path) -> tuple[PiConfig, PiProcessor, dict[str, torch.Tensor]]:
    """Our config, processor and weights, the weights checked to fill the model exactly."""
    if folder.is_dir() and source_kind(folder) == "lerobot":
        raise ConversionError(f"{folder} is a LeRobot policy folder already: LeRobot loads it as it is.")
    check_source_kind(folder, "pi")
    if not (folder / "config.json").is_file():
        raise ConversionError(f"{folder} has no config.json: not a π folder.")
    if not (folder / PROCESSOR_CONFIG).is_file():
        raise ConversionError(f"{folder} has no {PROCESSOR_CONFIG}: LeRobot's folder needs the processor's statistics "
                              "and robot dims (convert with --tokenizer, or export a `pi train` output).")
    try:
        config = PiConfig.from_pretrained(folder)
        processor = PiProcessor.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as err:
        raise ConversionError(f"{folder}: cannot read the π folder: {err}") from err
    state_dict = load_safetensors(folder)
    check_complete(state_dict, config, source=str(folder))
    return config, processor, state_dict


def preprocessing_note(config: PiConfig, processor: PiProcessor) -> str | None:
    """A line for folders that follow openpi's pre-processing, which LeRobot's pipeline does not reproduce."""
    if processor.conventions == "lerobot":
        return None
    fast = ("; π0-FAST: a BOS after the prompt and no position gap before the answer" if config.variant == "pi0_fast"
            else "")
    return ("note: this folder follows openpi's pre-processing; LeRobot runs its own, which differs slightly "
            "(normaliser epsilon 1e-8 instead of 1e-6, the task text cleaned differently, images resized with "
            f"padding in float{fast}).")


def robot_note(processor: PiProcessor) -> str | None:
    """A line for what the robot layout holds that a LeRobot policy folder has no place for."""
    robot = processor.robot
    dropped = []
    if robot is not None and robot.default_prompt is not None:
        dropped.append(f"default prompt {robot.default_prompt!r} (LeRobot reads the task from each observation)")
    if robot is not None and robot.metadata:
        dropped.append(f"metadata ({', '.join(robot.metadata)}; openpi's server sends it to clients, LeRobot has none)")
    verb = "are" if len(dropped) > 1 else "is"
    return f"note: the robot layout's {' and '.join(dropped)} {verb} not exported." if dropped else None


def export_lerobot(folder: str | os.PathLike, output: str | os.PathLike, allow_custom_sizes: bool = False,
                   log=print) -> Path:
    """Writes `output`, a LeRobot 0.6 policy folder of the π folder `folder`, atomically (a staging folder
    beside it, renamed into place; an existing non-empty `output` is refused). `allow_custom_sizes` exports
    a model whose sizes LeRobot's table does not have (unpatched LeRobot cannot load it)."""
    folder, output = Path(folder), check_output(output)
    config, processor, state_dict = read_folder(folder)
    check_head_count(config, folder / "config.json")
    check_robot_layout(processor, folder / PROCESSOR_CONFIG)
    dims = robot_dims(processor, folder / PROCESSOR_CONFIG)
    names, unbuildable = lerobot_variants(config)
    if unbuildable and not allow_custom_sizes:
        parts = "; ".join(f"{part} ({sizes})" for part, sizes in unbuildable.items())
        raise ConversionError(
            f"{folder / 'config.json'}: LeRobot builds its π models from a fixed table (Gemma 2B / 300M, SigLIP "
            f"So400m, a {LEROBOT_VOCAB}-token vocabulary), which does not have this model's {parts}: unpatched "
            "LeRobot cannot load the export. Pass --allow-custom-sizes to export it for a LeRobot patched to these "
            "sizes.")
    tensors = lerobot_state_dict(state_dict, config)
    stats = normaliser_stats(processor, dims)
    settings = lerobot_config(config, processor, dims, names, lerobot_dtype(state_dict))

    with staged_folder(output) as staging:
        (staging / "config.json").write_text(json.dumps(settings, indent=4) + "\n")
        save_file(tensors, staging / "model.safetensors")
        write_pipeline(staging, PREPROCESSOR, preprocessor_steps(config, processor, dims), stats)
        write_pipeline(staging, POSTPROCESSOR, postprocessor_steps(config, processor, dims), stats)
    if unbuildable:
        log(f"note: sizes LeRobot's table does not have ({', '.join(unbuildable)}): unpatched LeRobot cannot load "
            f"{output}; its config.json names {' / '.join(names.values())}, which a patched LeRobot must build at "
            "this model's sizes.")
    for note in (preprocessing_note(config, processor), robot_note(processor)):
        if note:
            log(note)
    return output


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("folder", metavar="FOLDER", help="a π folder (`pi convert ...` or `pi train` output, with its processor)")
    parser.add_argument("output", metavar="OUT", help="the LeRobot policy folder to write (must not exist, or be empty)")
    parser.add_argument("--allow-custom-sizes", action="store_true",
                        help="export a model whose sizes are not LeRobot's (Gemma 2B / 300M, SigLIP So400m): only a "
                             "LeRobot patched to those sizes loads it")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        path = export_lerobot(args.folder, args.output, args.allow_custom_sizes)
    except (ConversionError, OSError) as err:
        print(f"{JOB}: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0

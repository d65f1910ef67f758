"""`pi info FOLDER [--json]`: what a π folder expects and returns, without loading its weights.

Written here because what a robot integrator needs is spread over three files and the defaults that fill them:
the model's `config.json` (variant, cameras, image size, horizon, padded action dim, decoding budget),
the processor's `processor_config.json` (prompt length, statistics, robot layout, the robot's action dims, whose
conventions) and the safetensors headers (parameter count). The robot's action dims are resolved as
`PiProcessor.post_process` resolves them (`robot_action_dim_source`). A folder without a processor, without
statistics, or a π0-FAST processor that cannot decode is described anyway, with what is missing and how to add it
(docs/conversion.md, "Completing a converted folder").
"""

import argparse
import json
import math
import os
import sys
import textwrap
from pathlib import Path

from safetensors import SafetensorError, safe_open

from configuration_pi import PiConfig
from conversion.convert_lerobot import check_source_kind
from conversion.hf_folder import ConversionError
from conversion.json_files import index_shards, read_json
from processing_pi import PiProcessor
from processing_pi.processing_pi import PROCESSOR_CONFIG

VARIANT_NAMES = {"pi0": "π0", "pi05": "π0.5", "pi0_fast": "π0-FAST"}
WEIGHTS_INDEX = "model.safetensors.index.json"
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}
COMPLETING = "docs/conversion.md, \"Completing a converted folder\""


class InfoError(ValueError):
    """The folder is not a π model folder."""


# ---- reading the folder ----------------------------------------------------------------------------


def read_weights(folder: Path) -> dict | None:
    """Parameter count, dtypes and bytes from the safetensors headers, read by `safe_open` (the index's shards, or every
    `*.safetensors` file); None when the folder holds no weights."""
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        files = [folder / name for name in index_shards(index, InfoError)]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    parameters, size, dtypes = 0, 0, set()
    for path in files:
        try:
            with safe_open(path, "pt") as weights:  # reads the header; no tensor is loaded
                for name in weights.keys():
                    tensor = weights.get_slice(name)
                    count = math.prod(tensor.get_shape())
                    dtype = tensor.get_dtype()
                    parameters += count
                    size += count * DTYPE_BYTES[dtype]
                    dtypes.add(dtype)
        except (SafetensorError, OSError) as err:
            raise InfoError(f"{path}: not a readable safetensors file ({err}).") from err
    return {"parameters": parameters, "bytes": size, "dtypes": sorted(dtypes), "files": [path.name for path in files]}


def _weights(folder: Path, config: PiConfig) -> dict | None:
    """`read_weights`; for a quantized folder, whose quantized tensors are stored in parts (values, scales, ...), also
    how it was quantized, and the parameters counted as the model has them (built on the meta device)."""
    weights = read_weights(folder)
    quantization = getattr(config, "quantization_config", None)
    if weights is None or not quantization:
        return weights
    import torch

    from modeling_pi import PiForActionGeneration

    quantization = quantization if isinstance(quantization, dict) else quantization.to_dict()
    kind = ((quantization.get("quant_type") or {}).get("default") or {}).get("_type")  # torchao's config class
    with torch.device("meta"):
        parameters = PiForActionGeneration(config).num_parameters()
    return {**weights, "parameters": parameters,
            "quantization": {"method": quantization.get("quant_method"), "config": kind}}


def load_processor(folder: Path) -> tuple[PiProcessor | None, str | None]:
    """The folder's processor, or None and why not."""
    if not (folder / PROCESSOR_CONFIG).is_file():
        return None, f"no {PROCESSOR_CONFIG}"
    try:
        return PiProcessor.from_pretrained(folder), None
    except (OSError, ValueError, KeyError) as err:
        return None, f"{PROCESSOR_CONFIG} does not load: {str(err).rstrip('.')}"


def _convert_with_stats(processor) -> str:
    """How a conversion gives a folder its statistics: openpi's flag, or the source's own processor files."""
    if processor.conventions == "lerobot":
        return "pi convert lerobot from the policy folder with its policy_preprocessor files (they hold them)"
    return ("pi convert openpi ... --norm-stats FILE (a transformers PI0 / PI05 folder: pi convert transformers-pi0 / "
            "transformers-pi05 from the folder with its saved processor)")


def _convert_with_robot_dims(processor) -> str:
    """openpi's conversion takes the robot's action dims as a flag; LeRobot's has none (its statistics give them)."""
    return "" if processor.conventions == "lerobot" else "pi convert openpi ... --robot-action-dim N, or "


# ---- what the model expects and returns --------------------------------------------------------------


def describe(folder: str | os.PathLike) -> dict:
    """Everything `pi info` prints, as JSON-able data."""
    folder = Path(folder)
    try:
        check_source_kind(folder, "pi")
    except ConversionError as err:
        raise InfoError(str(err)) from None
    if not (folder / "config.json").is_file():
        raise InfoError(f"{folder} has no config.json: not a π model folder (pi convert and pi train write one).")
    read_json(folder / "config.json", InfoError)
    try:
        config = PiConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise InfoError(f"{folder}/config.json is not a π config: {err}") from err
    processor, missing_processor = load_processor(folder)
    return {
        "folder": str(folder),
        "variant": config.variant,
        "weights": _weights(folder, config),
        "cameras": list(processor.image_keys if processor else config.image_keys),
        "image_size": config.vision_config.image_size,
        "prompt": _prompt(config, processor),
        "state": _state(config, processor),
        "actions": _actions(config, processor),
        "normalisation": _normalisation(processor),
        "conventions": processor.conventions if processor else None,
        "robot": _robot(processor),
        "generation": _generation(config, processor),
        "processor": processor is not None,
        "problems": _problems(folder, config, processor, missing_processor),
    }


def _prompt(config: PiConfig, processor: PiProcessor | None) -> dict:
    state_in_prompt = processor.discrete_state_input if processor else config.variant != "pi0"
    if not state_in_prompt:
        text = 'BOS + "{prompt}\\n"'
    elif config.variant == "pi05":
        text = 'BOS + "Task: {prompt}, State: {state as 256 bins};\\nAction: "'
    else:
        text = 'BOS + "Task: {prompt}, State: {state as 256 bins};\\n"'
    if processor is not None and processor.conventions == "lerobot":
        text += ", as LeRobot writes it" + (" (and one more BOS)" if config.variant == "pi0_fast" else "")
    robot = processor.robot if processor else None
    return {"format": text, "max_tokens": processor.max_token_len if processor else config.max_token_len,
            "state_in_prompt": state_in_prompt, "default_prompt": robot.default_prompt if robot else None}


def _state(config: PiConfig, processor: PiProcessor | None) -> dict:
    robot_dim, source = None, None
    if processor is not None and processor.robot is not None and processor.robot.state_dim:
        robot_dim, source = processor.robot.state_dim, "robot"
    elif processor is not None and processor.norm_stats is not None:
        robot_dim, source = processor.norm_stats.state.dim, "statistics"
    # π0.5 trained without the state in its prompt (openpi's discrete_state_input=False) reads none
    read_as = ("prompt" if _prompt(config, processor)["state_in_prompt"]
               else "vector" if config.variant == "pi0" else "unused")
    return {"robot_dim": robot_dim, "robot_dim_from": source, "read_as": read_as,
            "model_dim": config.action_dim if config.variant == "pi0" else None}


def _actions(config: PiConfig, processor: PiProcessor | None) -> dict:
    robot_dim, source = processor.robot_action_dim_source() if processor else (None, None)
    horizon = config.action_horizon
    if processor is not None and config.variant == "pi0_fast":
        horizon = processor.action_horizon or processor.action_tokenizer.time_horizon
    return {"horizon": horizon, "model_dim": config.action_dim if config.is_flow else None,
            "robot_dim": robot_dim, "robot_dim_from": source}


def _normalisation(processor: PiProcessor | None) -> dict | None:
    if processor is None:
        return None
    stats = processor.norm_stats
    dims = {key: getattr(stats, key).dim if stats is not None and getattr(stats, key) else None for key in ("state", "actions")}
    return {"mode": processor.norm_mode, "statistics": dims}


def _robot(processor: PiProcessor | None) -> dict | None:
    robot = processor.robot if processor else None
    if robot is None:
        return None
    return {"name": robot.name, **robot.describe(), "state_dim": robot.state_dim, "action_dim": robot.action_dim,
            "show_blank_cameras": robot.show_blank_cameras, "delta_action_mask": robot.delta_action_mask,
            "adapt_to_pi": robot.adapt_to_pi}


def _generation(config: PiConfig, processor: PiProcessor | None) -> dict:
    if config.is_flow:
        return {"num_steps": config.num_inference_steps}
    fast = processor.action_tokenizer if processor else None
    return {"max_new_tokens": config.max_new_tokens, "fast_vocab_size": fast.vocab_size if fast else None}


def _problems(folder: Path, config: PiConfig, processor: PiProcessor | None, missing_processor: str | None) -> list[str]:
    """What keeps the folder from turning a robot's raw values into model inputs and back, and how to add it."""
    if processor is None:
        fast = " and --fast-tokenizer FAST_FOLDER" if config.variant == "pi0_fast" else ""
        return [f"{missing_processor}: AutoProcessor cannot load this folder, and the model takes only its tensors "
                f"(pixel_values, input_ids, ...). Add a processor: convert again with --tokenizer "
                f"paligemma_tokenizer.model{fast}, or see {COMPLETING}."]
    problems = []
    actions = _actions(config, processor)
    if processor.norm_stats is None:
        kept = f" with all {processor.action_dim} dims" if config.is_flow and not actions["robot_dim"] else ""
        problems.append("no normalisation statistics: the processor takes the state as already normalised and "
                        f"post_process returns normalised actions{kept}. Add them: {_convert_with_stats(processor)}, "
                        f"or AutoProcessor.from_pretrained({str(folder)!r}, norm_stats=FILE).save_pretrained"
                        f"({str(folder)!r}) ({COMPLETING}).")
    if config.variant == "pi0_fast" and not (actions["horizon"] and actions["robot_dim"]):
        problems.append("post_process cannot decode π0-FAST tokens: it needs the robot's action dims (from "
                        "robot_action_dim, a robot layout or the action statistics) and the chunk's length "
                        f"(action_horizon). Add them: {_convert_with_robot_dims(processor)}AutoProcessor.from_pretrained"
                        f"({str(folder)!r}, robot_action_dim=N).save_pretrained({str(folder)!r}) ({COMPLETING}).")
    return problems


# ---- printing ----------------------------------------------------------------------------------------


def _count(number: int) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if number >= size:
            return f"{number / size:.3g}{suffix}"
    return str(number)


DIM_SOURCES = {"robot_action_dim": "robot_action_dim", "robot": "the robot layout", "statistics": "the statistics",
           "FAST tokenizer": "the FAST tokenizer"}


def _dims(dim: int | None, source: str | None, unknown: str) -> str:
    return f"{dim} robot dims (from {DIM_SOURCES[source]})" if dim else unknown


def _row(name: str, text: str) -> str:
    return textwrap.fill(text, width=110, initial_indent=f"{name:<14} ", subsequent_indent=" " * 15)


def format_info(info: dict) -> str:
    """The human-readable form of `describe`'s answer."""
    lines = [_title(info)]
    rows = [
        ("cameras", f"{', '.join(info['cameras'])} (each resized with padding to {info['image_size']}×{info['image_size']})"),
        ("prompt", _prompt_line(info["prompt"])),
        ("state", _state_line(info["state"])),
        ("actions", _actions_line(info["actions"])),
        ("normalisation", _normalisation_line(info["normalisation"])),
        ("conventions", info["conventions"] or "—"),
        ("robot", _robot_line(info["robot"], info["processor"])),
        ("generation", _generation_line(info["generation"])),
    ]
    lines += [_row(name, text) for name, text in rows]
    lines += [_row("problem", problem) for problem in info["problems"]]
    return "\n".join(lines)


def _title(info: dict) -> str:
    title = f"{info['folder']}: {VARIANT_NAMES[info['variant']]} (variant {info['variant']})"
    weights = info["weights"]
    if weights is None:
        return title + ", no weights"
    dtypes = ", ".join(DTYPE_NAMES.get(name, name) for name in weights["dtypes"])
    quantized = ""
    if "quantization" in weights:
        method, kind = weights["quantization"]["method"], weights["quantization"]["config"]
        quantized = f"; quantized with {method}" + (f" ({kind})" if kind else "") + ", which loading needs"
    return title + f", {_count(weights['parameters'])} parameters ({dtypes}, {weights['bytes'] / 1e6:.1f} MB{quantized})"


def _prompt_line(prompt: dict) -> str:
    text = f"{prompt['format']}, at most {prompt['max_tokens']} tokens"
    return text + (f"; default prompt {prompt['default_prompt']!r}" if prompt["default_prompt"] else "")


def _state_line(state: dict) -> str:
    where = {"prompt": "read in the prompt as 256 bins", "unused": "not read by the model (not in its prompt)",
             "vector": f"a vector zero-padded to {state['model_dim']}"}[state["read_as"]]
    return f"{_dims(state['robot_dim'], state['robot_dim_from'], 'robot dims not fixed (no statistics or robot layout)')}, {where}"


def _actions_line(actions: dict) -> str:
    chunk = (f"chunk of {actions['horizon'] or 'unknown'} steps × "
             f"{_dims(actions['robot_dim'], actions['robot_dim_from'], 'unknown robot dims')}")
    if actions["model_dim"] is None:
        return f"{chunk}, decoded from FAST tokens"
    return f"{chunk}; the model generates {actions['model_dim']} normalised dims"


def _normalisation_line(normalisation: dict | None) -> str:
    if normalisation is None:
        return "— (no processor)"
    present = [f"{key} ({dim} dims)" for key, dim in normalisation["statistics"].items() if dim]
    return f"{normalisation['mode']}; statistics: {', '.join(present) or 'none'}"


def _robot_line(robot: dict | None, has_processor: bool) -> str:
    if robot is None:
        return "none: pass images, prompt and state by name" if has_processor else "—"
    blank = "a black image the model sees" if robot["show_blank_cameras"] else "none (masked)"
    cameras = ", ".join(f"{camera} ← {key or blank}" for camera, key in robot["cameras"].items())
    return (f"{robot['name']}: cameras {cameras}; state ← {', '.join(robot['state_keys'])}; "
            f"prompt ← {robot['prompt_key']}; actions in the robot's commands")


def _generation_line(generation: dict) -> str:
    if "num_steps" in generation:
        return f"{generation['num_steps']} flow-matching steps by default (num_steps=)"
    vocab = f" of a {generation['fast_vocab_size']}-token FAST vocabulary" if generation["fast_vocab_size"] else ""
    return f"up to {generation['max_new_tokens']} new tokens{vocab} (max_new_tokens=)"


# ---- pi info -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("folder", help="a converted or trained π folder")
    parser.add_argument("--json", action="store_true", help="print JSON (for programs) instead of text")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        info = describe(args.folder)
    except InfoError as err:
        print(f"pi info: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0

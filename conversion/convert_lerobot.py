"""LeRobot's and transformers' own π checkpoints -> Hugging Face folders of the π family.

    pi convert lerobot --checkpoint DIR --output OUT [--config PI_CONFIG] [--tokenizer ...] [--fast-tokenizer ...]
    pi convert transformers-pi0 --checkpoint DIR --output OUT [--tokenizer ...]
        (both also: [--image-keys ...] [--dtype ...] [--license ID] [--base-model ORG/NAME]
         [--push-to-hub ORG/NAME [--private]])

Both store the PyTorch port of openpi in one safetensors layout: `paligemma_with_expert.paligemma.*`
(SigLIP, projector, Gemma 2B), `paligemma_with_expert.gemma_expert.*` (the action expert) and the
flow projections at the top, optionally under a `model.` prefix (LeRobot's policy wrapper). Since
the tied embedding may be stored only as `paligemma.lm_head`, and the language model may sit under
one `model.` level more (transformers' `PI0ForConditionalGeneration.save_pretrained`), the names are
normalised before mapping. Tensors keep their layout ([out, in] Linear weights); only the π0.5
adaRMS projections (`*norm.dense`) are renamed. The expert's own embedding / `lm_head` is never read
by the model and is dropped, as are π0.5 checkpoints' unused `state_proj` and plain expert norm
scales; anything else unknown stops the conversion.

The architecture comes from the checkpoint's `config.json`: transformers' PI0 stores its full
sub-configs; LeRobot names openpi's Gemma variants (`gemma_2b`, `gemma_300m`, and their `_lora`
forms); other variants need `--config`, a PiConfig JSON giving the architecture. Either way every
tensor's shape is checked against the model.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from configuration_pi import PiConfig
from configuration_pi.configuration_pi import _GEMMA_2B, _GEMMA_300M, _SIGLIP_SO400M, DEFAULT_IMAGE_KEYS
from conversion.hf_folder import DTYPES, ConversionError, build_processor, check_complete, check_output, write_folder
from conversion.push import add_publish_arguments, card_options, publish
from processing_pi.normalization import ArrayStats, NormStats

LEROBOT_VARIANTS = {"pi0": "pi0", "pi05": "pi05", "pi0_fast": "pi0_fast", "pi0fast": "pi0_fast"}
GEMMA_VARIANTS = {"gemma_2b": _GEMMA_2B, "gemma_2b_lora": _GEMMA_2B, "gemma_300m": _GEMMA_300M, "gemma_300m_lora": _GEMMA_300M}
# LeRobot normaliser modes -> the processor's
NORM_MODES = {"MEAN_STD": "zscore", "QUANTILES": "quantile"}
IMAGE_PREFIX = "observation.images."

# Source-name rewrites, applied in order; the first matching rule wins.
_RENAMES = [
    (r"^model\.vlm\.", "paligemma_with_expert.paligemma.model."),  # transformers' in-memory names
    (r"^model\.dit\.", "paligemma_with_expert.gemma_expert.model."),
    (r"^embed_action_time\.", ""),
    (r"^model\.", ""),  # LeRobot's policy wrapper
]
_TARGETS = [
    (r"^paligemma_with_expert\.paligemma\.(?:model\.)?vision_tower\.(?:vision_model\.)?", "vision_tower."),
    (r"^paligemma_with_expert\.paligemma\.(?:model\.)?multi_modal_projector\.linear\.", "multi_modal_projector."),
    (r"^paligemma_with_expert\.paligemma\.(?:model\.)?language_model\.(?:model\.)?", "language_model."),
    (r"^paligemma_with_expert\.paligemma\.lm_head\.weight$", "language_model.embed_tokens.weight"),
    (r"^paligemma_with_expert\.gemma_expert\.model\.", "action_expert."),
]
_NEVER_READ = re.compile(r"^(paligemma_with_expert\.gemma_expert\.lm_head|action_expert\.embed_tokens)\.")
_PI05_UNUSED = re.compile(r"^(state_proj\.|action_expert\.(layers\.\d+\.\w+_layernorm|norm)\.weight$)")


def our_name(key: str) -> str:
    """A LeRobot / transformers-PI0 parameter name -> ours (unchanged when already at the top level)."""
    for pattern, replacement in _RENAMES:
        if re.match(pattern, key):
            key = re.sub(pattern, replacement, key)
            break
    for pattern, replacement in _TARGETS:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return key


def convert_state_dict(tensors: dict[str, torch.Tensor], config: PiConfig, dtype: torch.dtype | None = None) -> dict:
    """Renames, drops what the model never reads, and checks the result fills the model exactly."""
    state_dict = {}
    for key, tensor in tensors.items():
        name = our_name(key)
        if _NEVER_READ.match(name):
            continue
        if config.use_adarms:
            if _PI05_UNUSED.match(name):
                continue
            name = re.sub(r"(layernorm|norm)\.dense\.", r"\1.modulation.", name)
        if name in state_dict:
            if not torch.equal(state_dict[name], tensor):
                raise ConversionError(f"{key} and another tensor both give {name}, with different values.")
            continue
        state_dict[name] = tensor.to(dtype or tensor.dtype)
    check_complete(state_dict, config)
    return state_dict


# ---- the architecture and the processor settings, from config.json ----------------------------------


def _gemma(config: dict, **extra) -> dict:
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "vocab_size", "rms_norm_eps", "hidden_act")
    return {"model_type": "gemma", **{k: config[k] for k in fields if k in config},
            "use_bidirectional_attention": True, **extra}


def transformers_pi0_config(settings: dict, image_keys=None, max_token_len: int | None = None) -> PiConfig:
    """transformers' `PI0Config` (model_type "pi0") -> ours."""
    if settings.get("model_type") != "pi0":
        raise ConversionError(f"Expected a transformers PI0 config (model_type 'pi0'), got {settings.get('model_type')!r}.")
    if settings["max_state_dim"] != settings["max_action_dim"]:
        raise ConversionError("The π family pads state and actions to one dim; this checkpoint has max_state_dim "
                              f"{settings['max_state_dim']} and max_action_dim {settings['max_action_dim']}.")
    vlm = settings["vlm_config"]
    vision_fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                     "patch_size", "layer_norm_eps", "hidden_act")
    return PiConfig(
        variant="pi0",
        vision_config={"model_type": "siglip_vision_model", "vision_use_head": False,
                       **{k: vlm["vision_config"][k] for k in vision_fields if k in vlm["vision_config"]}},
        text_config=_gemma(vlm["text_config"]),
        expert_config=_gemma(settings["dit_config"], vocab_size=1, pad_token_id=None, bos_token_id=None, eos_token_id=None),
        action_dim=settings["max_action_dim"],
        action_horizon=settings["chunk_size"],
        max_token_len=max_token_len,
        image_keys=image_keys or DEFAULT_IMAGE_KEYS,
        num_inference_steps=settings["num_inference_steps"],
        time_beta_alpha=settings["time_sampling_beta_alpha"],
        time_beta_beta=settings["time_sampling_beta_beta"],
        time_scale=settings["time_sampling_scale"],
        time_offset=settings["time_sampling_offset"],
        min_period=settings["min_period"],
        max_period=settings["max_period"],
    )


def lerobot_config(settings: dict, architecture: PiConfig | None = None, image_keys=None) -> PiConfig:
    """LeRobot's policy config.json (`"type": "pi0" | "pi05" | "pi0_fast"`) -> ours."""
    variant = LEROBOT_VARIANTS.get(settings.get("type"))
    if variant is None:
        raise ConversionError(f"Not a LeRobot π policy config: type {settings.get('type')!r}; expected one of "
                              f"{', '.join(LEROBOT_VARIANTS)}.")
    if settings.get("max_state_dim", 32) != settings.get("max_action_dim", 32):
        raise ConversionError("The π family pads state and actions to one dim; this checkpoint has max_state_dim "
                              f"{settings['max_state_dim']} and max_action_dim {settings['max_action_dim']}.")
    if architecture is not None:
        sizes = {"vision_config": architecture.vision_config.to_dict(), "text_config": architecture.text_config.to_dict()}
        if variant != "pi0_fast":
            sizes["expert_config"] = architecture.expert_config.to_dict()
    else:
        names = [settings.get("paligemma_variant", "gemma_2b")] + ([settings.get("action_expert_variant", "gemma_300m")]
                                                                    if variant != "pi0_fast" else [])
        unknown = [name for name in names if name not in GEMMA_VARIANTS]
        if unknown:
            raise ConversionError(f"Unknown Gemma variant {', '.join(unknown)}: pass the architecture with --config.")
        resolution = settings.get("image_resolution", [224, 224])
        if resolution[0] != resolution[1]:
            raise ConversionError(f"image_resolution {resolution} is not square.")
        sizes = {"vision_config": {"model_type": "siglip_vision_model", **_SIGLIP_SO400M, "image_size": resolution[0]},
                 "text_config": {"model_type": "gemma", **GEMMA_VARIANTS[names[0]]}}
        if variant != "pi0_fast":
            sizes["expert_config"] = {"model_type": "gemma", **GEMMA_VARIANTS[names[1]]}
    cameras = [key.removeprefix(IMAGE_PREFIX) for key, feature in settings.get("input_features", {}).items()
               if feature.get("type") == "VISUAL"]
    schedule = {
        "num_inference_steps": settings.get("num_inference_steps"),
        "time_beta_alpha": settings.get("time_sampling_beta_alpha"),
        "time_beta_beta": settings.get("time_sampling_beta_beta"),
        "time_scale": settings.get("time_sampling_scale"),
        "time_offset": settings.get("time_sampling_offset"),
        "min_period": settings.get("min_period"),
        "max_period": settings.get("max_period"),
        "max_new_tokens": settings.get("max_decoding_steps"),
    }
    try:
        return PiConfig(
            variant=variant,
            **sizes,
            action_dim=settings.get("max_action_dim", 32),
            action_horizon=settings.get("chunk_size"),
            max_token_len=settings.get("tokenizer_max_length"),
            image_keys=image_keys or cameras or DEFAULT_IMAGE_KEYS,
            **{key: value for key, value in schedule.items() if value is not None},
        )
    except ValueError as err:
        raise ConversionError(f"The checkpoint's config does not describe a valid π model: {err}") from err


def lerobot_norm_stats(folder: Path) -> tuple[NormStats | None, str | None]:
    """The statistics and mode of LeRobot's saved normaliser (`policy_preprocessor.json` and its
    `*_normalizer_processor.safetensors`), or (None, None) when the checkpoint has none."""
    pipeline = folder / "policy_preprocessor.json"
    if not pipeline.is_file():
        return None, None
    steps = json.loads(pipeline.read_text())["steps"]
    normalizer = next((step for step in steps if step.get("registry_name") == "normalizer_processor"), None)
    if normalizer is None or "state_file" not in normalizer:
        return None, None
    modes = {NORM_MODES.get(normalizer["config"]["norm_map"].get(kind)) for kind in ("STATE", "ACTION")}
    if len(modes) != 1 or None in modes:
        raise ConversionError(f"{pipeline}: state and actions must both be MEAN_STD or both QUANTILES, got "
                              f"{normalizer['config']['norm_map']}.")
    with safe_open(folder / normalizer["state_file"], "pt") as stats_file:
        flat = {key: stats_file.get_tensor(key).double().numpy() for key in stats_file.keys()}
    stats = {}
    for theirs, ours in (("observation.state", "state"), ("action", "actions")):
        fields = {name: flat.get(f"{theirs}.{name}") for name in ("mean", "std", "q01", "q99")}
        if fields["mean"] is not None or fields["q01"] is not None:
            stats[ours] = ArrayStats(**fields)
    return (NormStats(**stats) if stats else None), modes.pop()


def transformers_pi0_norm_stats(folder: Path) -> tuple[NormStats | None, str | None]:
    """z-score statistics from a `PI0Processor`'s processor_config.json, if the folder has one with them."""
    path = folder / "processor_config.json"
    if not path.is_file():
        return None, None
    saved = json.loads(path.read_text())
    stats = {ours: ArrayStats.from_dict({"mean": saved.get(f"{theirs}_mean"), "std": saved.get(f"{theirs}_std")})
             for theirs, ours in (("state", "state"), ("actions", "actions")) if saved.get(f"{theirs}_mean") is not None}
    return (NormStats(**stats) if stats else None), "zscore"


# ---- reading and writing ----------------------------------------------------------------------------


def load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """`model.safetensors`, or the shards its index lists."""
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    tensors = {}
    for name in files:
        if not (folder / name).is_file():
            raise ConversionError(f"{folder} has no {name}.")
        with safe_open(folder / name, "pt") as weights:
            tensors.update({key: weights.get_tensor(key) for key in weights.keys()})
    return tensors


def convert_checkpoint(
    source: str,
    checkpoint: str | Path,
    output: str | Path,
    dtype: str | None = None,
    config_path: str | Path | None = None,
    image_keys: list[str] | None = None,
    tokenizer: str | None = None,
    fast_tokenizer: str | None = None,
    **card,
) -> Path:
    """`source` "lerobot" or "transformers-pi0": converts `checkpoint` and writes `output` atomically."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise ConversionError(f"{checkpoint} has no config.json.")
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"Unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}.")
    output = check_output(output)
    settings = json.loads((checkpoint / "config.json").read_text())
    norm_stats, norm_mode = None, None
    if source == "lerobot":
        config = lerobot_config(settings, PiConfig.from_json_file(config_path) if config_path else None, image_keys)
        norm_stats, norm_mode = lerobot_norm_stats(checkpoint)
    else:
        config = transformers_pi0_config(settings, image_keys)
        norm_stats, norm_mode = transformers_pi0_norm_stats(checkpoint)
    state_dict = convert_state_dict(load_safetensors(checkpoint), config, DTYPES.get(dtype))
    config.dtype = str(next(iter(state_dict.values())).dtype).removeprefix("torch.")
    processor = None
    if tokenizer is not None:
        processor = build_processor(config, tokenizer, fast_tokenizer, norm_stats, norm_mode)
    kind = "LeRobot checkpoint" if source == "lerobot" else "transformers PI0 checkpoint"
    return write_folder(output, config, state_dict, checkpoint.resolve().name, processor, source_kind=kind, **card)


def add_arguments(parser: argparse.ArgumentParser, source: str) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, help="folder with config.json and model.safetensors")
    parser.add_argument("--output", required=True, help="folder to write (must not exist, or be empty)")
    if source == "lerobot":
        parser.add_argument("--config", help="PiConfig JSON with the architecture, for Gemma variants other than "
                                             "gemma_2b / gemma_300m")
        parser.add_argument("--fast-tokenizer", help="FAST tokenizer folder (π0-FAST's processor)")
    parser.add_argument("--image-keys", nargs="+", help="camera names, in the model's order (default: the checkpoint's)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="default: the checkpoint's")
    parser.add_argument("--tokenizer", help="SentencePiece model (PaliGemma's tokenizer.model): also write the processor")
    parser.set_defaults(source=source)
    return add_publish_arguments(parser)


def run(args: argparse.Namespace) -> int:
    job = f"pi convert {args.source}"
    try:
        path = convert_checkpoint(args.source, args.checkpoint, args.output, args.dtype, getattr(args, "config", None),
                                  args.image_keys, args.tokenizer, getattr(args, "fast_tokenizer", None),
                                  **card_options(args))
    except (ConversionError, OSError) as err:
        print(f"{job}: error: {err}", file=sys.stderr)
        return 1
    except KeyError as err:
        print(f"{job}: error: {args.checkpoint}/config.json lacks the entry {err}.", file=sys.stderr)
        return 1
    return publish(args, path, job)

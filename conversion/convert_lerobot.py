"""LeRobot's and transformers' own π checkpoints -> Hugging Face folders of the π family.

    pi convert lerobot --checkpoint DIR --output OUT [--config PI_CONFIG] [--tokenizer ...] [--fast-tokenizer ...]
    pi convert transformers-pi0 --checkpoint DIR --output OUT [--tokenizer ...]
    pi convert transformers-pi05 --checkpoint DIR --output OUT [--tokenizer ...]
        (all also: [--image-keys ...] [--dtype ...] [--license ID] [--base-model ORG/NAME]
         [--push-to-hub ORG/NAME [--private]])

All store the PyTorch port of openpi in one safetensors layout: `paligemma_with_expert.paligemma.*`
(SigLIP, projector, Gemma), `paligemma_with_expert.gemma_expert.*` (the action expert) and the flow
projections at the top, optionally under a `model.` prefix (LeRobot's policy wrapper), the language
model possibly one `model.` level further down (transformers' `PI0` / `PI05ForConditionalGeneration`). Names are
normalised before mapping; tensors keep their layout ([out, in] Linear weights); only the π0.5 adaRMS
projections (`*norm.dense`) are renamed. The expert's own embedding / `lm_head` is never read and is
dropped, as are π0.5 checkpoints' unused `state_proj` and plain expert norm scales; anything else
unknown stops the conversion.

PaliGemma's `lm_head`: openpi ties it to the token embedding, and LeRobot starts from such weights but
keeps two tensors. A copy equal to the embedding (or standing in for a missing one) is the embedding.
Training moves them apart: π0 and π0.5 never read the head, so it is dropped (and said so); π0-FAST
computes its logits with it, so it stays as the model's own `lm_head` (`tie_word_embeddings=False`).

LeRobot's architecture comes from the tensors' shapes, whatever the `paligemma_variant` in its
config.json says. Two numbers are not in any shape: the query heads of the Gemma stacks, which
LeRobot's joint attention fixes at 8 (every Gemma variant it builds has 8), and SigLIP's heads, read
from the ViT width table (SigLIP So400m, 1152 wide, has 16; the table is Table 2 of "Scaling Vision
Transformers", arXiv 2106.04560); a width outside the table (a test-sized tower) gets heads 16 wide,
as the table's smallest entry has, and the output says so. `--config` (a PiConfig JSON) overrides the
inferred architecture.
transformers' PI0 and PI05 store their full sub-configs, which are used as they are. Either way every
tensor's shape is checked against the model.

transformers' PI0 / PI05 read their inputs differently from ours, to the same effect: `input_ids` holds
`image_seq_length` placeholder ids (`image_token_id`, the vocabulary size) per camera present in that
row, then the prompt, right-padded; the k-th run of placeholders takes the k-th present camera of
`pixel_values` [B, C, 3, H, W]. Ours takes the cameras apart from the prompt and masks absent ones; the
positions (valid tokens counted) and masks come out the same. PI05's processor writes our π0.5 prompt,
BOS + "Task: {task}, State: {bins};\\nAction: " with the same cleaning and 256 bins, so PI05, like ours,
reads the state in the prompt and takes no `state` tensor (without a state its prompt is
"Task: {task};\\nAction: ", where ours falls back to π0's). Its statistics, read from a saved processor's
`processor_config.json`, are applied with LeRobot's epsilons (1e-8); the converted processor applies
openpi's (1e-6), as for PI0. Numerically PI05 samples as ours does (flow time 1 = noise, Euler steps of
−1/num_steps, the same time embedding, adaRMS and two-block mask) but for two things that show only
outside float32: it draws noise in `pixel_values`' dtype and integrates in the noise's dtype (ours: float32),
and it runs the flow head and the adaRMS projections in the model's dtype (ours keeps them float32, as
openpi does). Its action expert rotates with a rotary embedding of its own, ours with the language
model's: the conversion checks that the two are the same.

A converted LeRobot folder keeps LeRobot's camera names (the feature keys without
`observation.images.`) and, with `--tokenizer`, a processor that follows LeRobot's conventions
(`conventions="lerobot"`): its normaliser and statistics, its prompt text, its image resize.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from configuration_pi import PiConfig
from configuration_pi.configuration_pi import DEFAULT_IMAGE_KEYS, FLOW_VARIANTS
from conversion.hf_folder import (DTYPES, ConversionError, build_processor, check_complete, check_output, check_tokenizers,
                                  weights_dtype, write_folder)
from conversion.json_files import index_shards, read_json
from conversion.push import add_publish_arguments, card_options, publish
from processing_pi.normalization import NEEDED_STATS, ArrayStats, NormStats
from processing_pi.prompts import FAST_SKIP_TOKENS, LEROBOT_ACTION_TOKENS

LEROBOT_VARIANTS = {"pi0": "pi0", "pi05": "pi05", "pi0_fast": "pi0_fast", "pi0fast": "pi0_fast"}
# `pi convert` sources of transformers' folders -> the variant (their config's model_type) and class prefix
TRANSFORMERS_VARIANTS = {"transformers-pi0": "pi0", "transformers-pi05": "pi05"}
TRANSFORMERS_NAMES = {"pi0": "PI0", "pi05": "PI05"}
SOURCE_NAMES = {"openpi": "an openpi (orbax) checkpoint", "lerobot": "a LeRobot policy folder",
                "transformers-pi0": "a transformers PI0 folder", "transformers-pi05": "a transformers PI05 folder",
                "pi": "a π folder"}
LEROBOT_QUERY_HEADS = 8  # LeRobot's joint attention reshapes its output to 8 heads; all its Gemma variants have 8
# ViT widths -> heads (big_vision's table: mu, Ti, S, M, B, L, So400m, H, g, g-opt / G-opt, G, e)
SIGLIP_HEADS = {32: 2, 192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1152: 16, 1280: 16, 1408: 16, 1536: 16, 1664: 16,
                1792: 16}
SMALL_VIT_HEAD_DIM = 16  # the head width of the table's smallest entry (mu: 32 wide, 2 heads)
# LeRobot's normalisers: z-score, or one formula over a range [low, high] (the processor's quantile mode)
RANGE_STATS = {"QUANTILES": ("q01", "q99"), "MIN_MAX": ("min", "max"), "QUANTILE10": ("q10", "q90")}
NORM_MODES = {"MEAN_STD": "zscore", **dict.fromkeys(RANGE_STATS, "quantile")}
IMAGE_PREFIX = "observation.images."
EMBEDDING = "language_model.embed_tokens.weight"
ARCHITECTURE_HINT = ("The architecture was inferred from the tensors' shapes; if it is not the checkpoint's, pass it "
                     "with --config (a PiConfig JSON).")
CONFIG_HINT = "The architecture of --config does not fit the tensors: leave --config out to infer it from their shapes."

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
    (r"^paligemma_with_expert\.paligemma\.(?:model\.)?lm_head\.weight$", "lm_head.weight"),
    (r"^paligemma_with_expert\.gemma_expert\.model\.", "action_expert."),
]
_NEVER_READ = re.compile(r"^(paligemma_with_expert\.gemma_expert\.lm_head|action_expert\.embed_tokens)\.")
_PI05_UNUSED = re.compile(r"^(state_proj\.|action_expert\.(layers\.\d+\.\w+_layernorm|norm)\.weight$)")


def our_name(key: str) -> str:
    """A LeRobot / transformers PI0 or PI05 parameter name -> ours (unchanged when already at the top level)."""
    for pattern, replacement in _RENAMES:
        if re.match(pattern, key):
            key = re.sub(pattern, replacement, key)
            break
    for pattern, replacement in _TARGETS:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return key


def rename_state_dict(tensors: dict[str, torch.Tensor], variant: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our names for the tensors the model reads, and a line for each tensor dropped that a user may miss.

    PaliGemma's `lm_head` ends up as the embedding (a tied copy), as π0-FAST's own head `lm_head.weight`
    (trained apart from the embedding), or dropped (π0 / π0.5, which never read it)."""
    renamed, notes = {}, []
    for key, tensor in tensors.items():
        name = our_name(key)
        if _NEVER_READ.match(name):
            continue
        if variant == "pi05":
            if _PI05_UNUSED.match(name):
                continue
            name = re.sub(r"(layernorm|norm)\.dense\.", r"\1.modulation.", name)
        if name in renamed:
            if not torch.equal(renamed[name], tensor):
                raise ConversionError(f"{key} and another tensor both give {name}, with different values.")
            continue
        renamed[name] = tensor
    head, embedding = renamed.pop("lm_head.weight", None), renamed.get(EMBEDDING)
    if head is None:
        return renamed, notes
    if embedding is None or torch.equal(head, embedding):
        renamed[EMBEDDING] = head  # the tied embedding, stored as the head
    elif variant == "pi0_fast":
        renamed["lm_head.weight"] = head
        notes.append("kept PaliGemma's lm_head as π0-FAST's own output head: it differs from the token embedding "
                     "(tie_word_embeddings=False)")
    else:
        difference = (head.float() - embedding.float()).abs().max().item()
        notes.append(f"dropped PaliGemma's lm_head (max |lm_head − embedding| {difference:.3g}): {variant} never reads "
                     "it; training moved only the embedding")
    return renamed, notes


def convert_state_dict(tensors: dict[str, torch.Tensor], config: PiConfig, dtype: torch.dtype | None = None,
                       hint: str = ARCHITECTURE_HINT) -> dict:
    """Renames, drops what the model never reads, and checks the result fills the model exactly (else an error
    naming at most ten tensors, then `hint`)."""
    state_dict, _ = rename_state_dict(tensors, config.variant)
    state_dict = {name: tensor.to(dtype or tensor.dtype) for name, tensor in state_dict.items()}
    check_complete(state_dict, config, hint=hint)
    return state_dict


# ---- the architecture and the processor settings, from config.json ----------------------------------


def _gemma(config: dict, **extra) -> dict:
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "vocab_size", "rms_norm_eps", "hidden_act", "rope_parameters")
    return {"model_type": "gemma", **{k: config[k] for k in fields if k in config},
            "use_bidirectional_attention": True, **extra}


def transformers_config(settings: dict, variant: str, image_keys=None, max_token_len: int | None = None) -> PiConfig:
    """transformers' `PI0Config` or `PI05Config` (model_type `variant`, "pi0" or "pi05") -> ours."""
    name = TRANSFORMERS_NAMES[variant]
    if settings.get("model_type") != variant:
        raise ConversionError(f"Expected a transformers {name} config (model_type {variant!r}), got "
                              f"{settings.get('model_type')!r}.")
    state_dim = settings.get("max_state_dim", settings["max_action_dim"])  # PI05 reads its state in the prompt
    if state_dim != settings["max_action_dim"]:
        raise ConversionError("The π family pads state and actions to one dim; this checkpoint has max_state_dim "
                              f"{state_dim} and max_action_dim {settings['max_action_dim']}.")
    vlm, expert = settings["vlm_config"], settings["dit_config"]
    if expert.get("rope_parameters") != vlm["text_config"].get("rope_parameters"):
        raise ConversionError(f"The {name} action expert's rotary embedding ({expert.get('rope_parameters')}) is not the "
                              f"language model's ({vlm['text_config'].get('rope_parameters')}): the π model rotates both "
                              "with the language model's.")
    vision_fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                     "patch_size", "layer_norm_eps", "hidden_act")
    return PiConfig(
        variant=variant,
        vision_config={"model_type": "siglip_vision_model", "vision_use_head": False,
                       **{k: vlm["vision_config"][k] for k in vision_fields if k in vlm["vision_config"]}},
        text_config=_gemma(vlm["text_config"]),
        expert_config=_gemma(expert, vocab_size=1, pad_token_id=None, bos_token_id=None, eos_token_id=None),
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


def _layers(shapes: dict, prefix: str) -> int:
    return len({name.removeprefix(prefix).split(".")[0] for name in shapes if name.startswith(prefix)})


def _shape(shapes: dict, name: str) -> tuple[int, ...]:
    if name not in shapes:
        raise ConversionError(f"The checkpoint has no tensor for {name}: not a π policy's weights. {ARCHITECTURE_HINT}")
    return shapes[name]


def _gemma_sizes(shapes: dict, stack: str, **extra) -> dict:
    """A Gemma stack's sizes from its first layer: 8 query heads (LeRobot's), the rest from the shapes."""
    layer = f"{stack}.layers.0."
    queries, width = _shape(shapes, f"{layer}self_attn.q_proj.weight")
    if queries % LEROBOT_QUERY_HEADS:
        raise ConversionError(f"{stack}'s queries are {queries} wide, not {LEROBOT_QUERY_HEADS} heads as LeRobot builds "
                              f"them. {ARCHITECTURE_HINT}")
    head_dim = queries // LEROBOT_QUERY_HEADS
    return {
        "model_type": "gemma",
        "hidden_size": width,
        "intermediate_size": _shape(shapes, f"{layer}mlp.gate_proj.weight")[0],
        "num_hidden_layers": _layers(shapes, f"{stack}.layers."),
        "num_attention_heads": LEROBOT_QUERY_HEADS,
        "num_key_value_heads": _shape(shapes, f"{layer}self_attn.k_proj.weight")[0] // head_dim,
        "head_dim": head_dim,
        "hidden_act": "gelu_pytorch_tanh",
        "use_bidirectional_attention": True,
        **extra,
    }


def siglip_heads(width: int) -> tuple[int, str | None]:
    """SigLIP's head count for a tower `width` wide, and a note when it is an assumption outside the ViT table."""
    if width in SIGLIP_HEADS:
        return SIGLIP_HEADS[width], None
    if width % SMALL_VIT_HEAD_DIM:
        raise ConversionError(f"The vision tower is {width} wide, outside the ViT width table and not a multiple of "
                              f"{SMALL_VIT_HEAD_DIM}: its head count is in no tensor shape. Pass the architecture with --config.")
    heads = width // SMALL_VIT_HEAD_DIM
    return heads, (f"assumed {heads} SigLIP heads of {SMALL_VIT_HEAD_DIM} for a {width}-wide vision tower, a width outside "
                   "the ViT table (no tensor shape gives the head count); pass --config if the checkpoint has others")


def _siglip_sizes(shapes: dict) -> dict:
    width, _, patch, _ = _shape(shapes, "vision_tower.embeddings.patch_embedding.weight")
    return {
        "model_type": "siglip_vision_model",
        "hidden_size": width,
        "intermediate_size": _shape(shapes, "vision_tower.encoder.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": _layers(shapes, "vision_tower.encoder.layers."),
        "num_attention_heads": siglip_heads(width)[0],
        "patch_size": patch,
        "image_size": round(_shape(shapes, "vision_tower.embeddings.position_embedding.weight")[0] ** 0.5) * patch,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": False,
    }


def architecture_from_shapes(shapes: dict[str, tuple[int, ...]], variant: str) -> dict:
    """PiConfig's sizes (vision, text and expert configs, action dim) from our names' shapes."""
    vocab_size = _shape(shapes, EMBEDDING)[0]
    sizes = {"vision_config": _siglip_sizes(shapes), "text_config": _gemma_sizes(shapes, "language_model", vocab_size=vocab_size)}
    if variant in FLOW_VARIANTS:
        sizes["expert_config"] = _gemma_sizes(shapes, "action_expert", vocab_size=1, pad_token_id=None, bos_token_id=None,
                                              eos_token_id=None)
        sizes["action_dim"] = _shape(shapes, "action_in_proj.weight")[1]
    return sizes


def source_kind(folder: Path) -> str | None:
    """The `pi convert` source a folder's files say it is ("openpi", "lerobot", "transformers-pi0",
    "transformers-pi05"), "pi" for a folder converted already, None when they say nothing."""
    if (folder / "_METADATA").exists() or (folder / "params" / "_METADATA").exists():
        return "openpi"
    try:
        settings = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(settings, dict):
        return None
    if settings.get("type") in LEROBOT_VARIANTS:
        return "lerobot"
    kinds = {variant: source for source, variant in TRANSFORMERS_VARIANTS.items()}
    return {**kinds, "pi": "pi"}.get(settings.get("model_type"))


def check_source_kind(folder: Path, source: str) -> None:
    """Refuses a folder that does not exist, or whose files say it is another source than `source` ("pi": a
    converted folder), naming the command that converts it."""
    if not folder.is_dir():
        raise ConversionError(f"{folder}: no such folder.")
    kind = source_kind(folder)
    if kind is None or kind == source:
        return
    if kind == "pi":
        raise ConversionError(f"{folder} is a π folder already: AutoModel.from_pretrained loads it as it is.")
    raise ConversionError(f"{folder} is {SOURCE_NAMES[kind]}, not {SOURCE_NAMES[source]}: convert it with "
                          f"pi convert {kind}.")


def lerobot_variant(settings: dict, path: Path | str = "config.json") -> str:
    variant = LEROBOT_VARIANTS.get(settings.get("type"))
    if variant is None:
        raise ConversionError(f"{path}: the policy type (key 'type') is {settings.get('type')!r}, not a π policy; "
                              f"expected one of {', '.join(LEROBOT_VARIANTS)}.")
    return variant


def lerobot_decoding_notes(settings: dict, path: Path) -> list[str]:
    """π0-FAST decoding settings of LeRobot's config that the converted model does not carry: raises for a FAST token
    offset other than openpi's (its tokens would be read as others), and says how to sample at its temperature."""
    skip = settings.get("fast_skip_tokens", FAST_SKIP_TOKENS)
    if skip != FAST_SKIP_TOKENS:
        raise ConversionError(f"{path}: fast_skip_tokens is {skip}; π0-FAST here places FAST tokens "
                              f"{FAST_SKIP_TOKENS} ids from the end of the vocabulary, as openpi does, so this policy's "
                              "tokens would be read as other ones.")
    notes = []
    temperature = settings.get("temperature") or 0.0
    if temperature:
        notes.append(f"LeRobot samples its FAST tokens at temperature {temperature}; the converted model decodes greedily "
                     f"unless asked: generate_actions(..., temperature={temperature})")
    targets = settings.get("max_action_tokens", LEROBOT_ACTION_TOKENS)
    if targets != LEROBOT_ACTION_TOKENS:
        notes.append(f"LeRobot pads or cuts this policy's FAST training targets to max_action_tokens={targets}; the "
                     f"converted processor writes them to {LEROBOT_ACTION_TOKENS}, LeRobot's default (generation is "
                     "unaffected)")
    steps, chunk = settings.get("n_action_steps"), settings.get("chunk_size")
    if steps and chunk and steps != chunk:
        notes.append(f"LeRobot decodes this policy's FAST tokens, which encode chunks of chunk_size={chunk} steps, as "
                     f"n_action_steps={steps} steps, cutting the coefficients; the converted model decodes the "
                     f"{chunk}-step chunk they encode, so its actions differ from LeRobot's select_action")
    return notes


def lerobot_action_dim(settings: dict, path: Path) -> int | None:
    """The robot's action dims, LeRobot's `output_features["action"]`: its policies cut their chunks to them."""
    feature = (settings.get("output_features") or {}).get("action")
    if feature is None:
        return None
    try:
        (dim,) = feature["shape"]
        return int(dim)
    except (KeyError, TypeError, ValueError) as err:
        raise ConversionError(f"{path}: output_features.action has no 1-D shape ({feature!r}).") from err


def lerobot_config(settings: dict, shapes: dict, architecture: PiConfig | None = None, image_keys=None) -> PiConfig:
    """LeRobot's policy config.json (`"type": "pi0" | "pi05" | "pi0_fast"`) and our names' tensor shapes -> ours.
    `architecture` (a PiConfig) replaces the sizes inferred from the shapes."""
    variant = lerobot_variant(settings)
    # π0 projects the state padded to max_state_dim; π0.5 and π0-FAST write it into the prompt unpadded
    if variant == "pi0" and settings.get("max_state_dim", 32) != settings.get("max_action_dim", 32):
        raise ConversionError("π0 pads state and actions to one dim; this checkpoint has max_state_dim "
                              f"{settings['max_state_dim']} and max_action_dim {settings['max_action_dim']}.")
    if settings.get("use_relative_actions"):
        raise ConversionError("config.json: use_relative_actions is on (actions relative to the state, per joint); "
                              "converting such a policy is not supported yet.")
    if architecture is not None:
        sizes = {"vision_config": architecture.vision_config.to_dict(), "text_config": architecture.text_config.to_dict(),
                 "action_dim": architecture.action_dim}
        if variant in FLOW_VARIANTS:
            sizes["expert_config"] = architecture.expert_config.to_dict()
    else:
        sizes = architecture_from_shapes(shapes, variant)
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
    fast = {"tie_word_embeddings": "lm_head.weight" not in shapes, "skip_position_after_prefix": False} if variant == "pi0_fast" else {}
    try:
        return PiConfig(
            variant=variant,
            **sizes,
            action_horizon=settings.get("chunk_size"),
            max_token_len=settings.get("tokenizer_max_length"),
            image_keys=image_keys or cameras or DEFAULT_IMAGE_KEYS,
            **fast,
            **{key: value for key, value in schedule.items() if value is not None},
        )
    except ValueError as err:
        raise ConversionError(f"The checkpoint's config does not describe a valid π model: {err}") from err


def lerobot_norm_stats(folder: Path) -> tuple[NormStats | None, str | None, str | None]:
    """The statistics and mode of LeRobot's saved normaliser (`policy_preprocessor.json` and its
    `*_normalizer_processor.safetensors`), and a note on how they were read; no statistics when the checkpoint has
    no normaliser (mode and note None) or one that passes both through (IDENTITY)."""
    pipeline = folder / "policy_preprocessor.json"
    if not pipeline.is_file():
        return None, None, None
    try:
        steps = read_json(pipeline, ConversionError)["steps"]
        normalizer = next((step for step in steps if step.get("registry_name") == "normalizer_processor"), None)
        if normalizer is None or "state_file" not in normalizer:
            return None, None, None
        norm_map = normalizer["config"]["norm_map"]
        kinds = [norm_map.get(kind, "IDENTITY") for kind in ("STATE", "ACTION")]
    except (KeyError, TypeError, AttributeError) as err:
        raise ConversionError(f"{pipeline}: not a LeRobot processor pipeline (its normaliser step: {err!r}).") from err
    if kinds == ["IDENTITY", "IDENTITY"]:
        return None, None, "its normaliser passes state and actions through (IDENTITY), and so does the processor"
    modes = {NORM_MODES.get(kind) for kind in kinds}
    if len(modes) != 1 or None in modes:
        raise ConversionError(f"{pipeline}: state by {kinds[0]} and actions by {kinds[1]}; the π processor normalises "
                              "both one way: both MEAN_STD, or both by a range (QUANTILES, MIN_MAX, QUANTILE10).")
    path = folder / normalizer["state_file"]
    if not path.is_file():
        raise ConversionError(f"{pipeline} names the statistics file {normalizer['state_file']}, which is missing.")
    try:
        with safe_open(path, "pt") as stats_file:
            flat = {key: stats_file.get_tensor(key).double().numpy() for key in stats_file.keys()}
    except SafetensorError as err:
        raise ConversionError(f"{path}: not a readable safetensors file ({err}).") from err
    mode, stats = modes.pop(), {}
    for kind, (theirs, ours) in zip(kinds, (("observation.state", "state"), ("action", "actions"))):
        names = dict(zip(NEEDED_STATS[mode], RANGE_STATS.get(kind, NEEDED_STATS[mode])))  # ours -> LeRobot's
        missing = [f"{theirs}.{name}" for name in names.values() if f"{theirs}.{name}" not in flat]
        if missing:
            raise ConversionError(f"{path}: the {kind} normaliser needs {', '.join(missing)}, which the file lacks.")
        # all four kept as saved, a range's bounds then in q01 and q99
        saved = {name: flat.get(f"{theirs}.{name}") for name in ("mean", "std", "q01", "q99")}
        stats[ours] = ArrayStats(**{**saved, **{name: flat[f"{theirs}.{lerobots}"] for name, lerobots in names.items()}})
    others = [f"the {what} by {kind} ([{', '.join(RANGE_STATS[kind])}] onto [-1, 1])"
              for what, kind in zip(("state", "actions"), kinds) if kind in RANGE_STATS and kind != "QUANTILES"]
    note = None if not others else (f"its normaliser maps {' and '.join(others)} as QUANTILES maps [q01, q99]: the "
                                    "processor's quantile mode, with those bounds saved as its q01 and q99")
    return NormStats(**stats), mode, note


def transformers_norm_stats(folder: Path) -> tuple[NormStats | None, str | None]:
    """The statistics of a saved `PI0Processor` / `PI05Processor` (processor_config.json), if the folder has any,
    and their mode: quantile where q01 and q99 are saved (PI05 then normalises by them), else z-score."""
    path = folder / "processor_config.json"
    if not path.is_file():
        return None, None
    saved = read_json(path, ConversionError)
    stats, modes = {}, {}
    for key in ("state", "actions"):
        values = {name: saved.get(f"{key}_{name}") for name in ("mean", "std", "q01", "q99")}
        mode = next((mode for mode in ("quantile", "zscore")
                     if all(values[name] is not None for name in NEEDED_STATS[mode])), None)
        if mode is not None:
            stats[key], modes[key] = ArrayStats.from_dict(values), mode
    if len(set(modes.values())) > 1:
        raise ConversionError(f"{path}: {', '.join(f'{key} by {mode}' for key, mode in modes.items())}; the π processor "
                              "normalises state and actions one way.")
    return (NormStats(**stats) if stats else None), next(iter(modes.values()), None)


# ---- reading and writing ----------------------------------------------------------------------------


def load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """`model.safetensors`, or the shards its index lists."""
    index = folder / "model.safetensors.index.json"
    files = index_shards(index, ConversionError) if index.is_file() else ["model.safetensors"]
    tensors = {}
    for name in files:
        if not (folder / name).is_file():
            raise ConversionError(f"{folder} has no {name}.")
        try:
            with safe_open(folder / name, "pt") as weights:
                tensors.update({key: weights.get_tensor(key) for key in weights.keys()})
        except SafetensorError as err:
            raise ConversionError(f"{folder / name}: not a readable safetensors file ({err}).") from err
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
    """`source` "lerobot", "transformers-pi0" or "transformers-pi05": converts `checkpoint` and writes `output`
    atomically."""
    checkpoint = Path(checkpoint)
    check_source_kind(checkpoint, source)
    if not (checkpoint / "config.json").is_file():
        raise ConversionError(f"{checkpoint} has no config.json.")
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"Unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}.")
    output = check_output(output)
    check_tokenizers(tokenizer, fast_tokenizer)
    settings = read_json(checkpoint / "config.json", ConversionError)
    tensors = load_safetensors(checkpoint)
    notes, conventions, robot_action_dim = [], None, None
    if source == "lerobot":
        variant = lerobot_variant(settings, checkpoint / "config.json")
        renamed, notes = rename_state_dict(tensors, variant)
        architecture = PiConfig.from_json_file(config_path) if config_path else None
        config = lerobot_config(settings, {name: tuple(t.shape) for name, t in renamed.items()}, architecture, image_keys)
        norm_stats, norm_mode, norm_note = lerobot_norm_stats(checkpoint)
        if norm_stats is None:  # else the statistics' dims say it, and training on other data replaces them
            robot_action_dim = lerobot_action_dim(settings, checkpoint / "config.json")
        notes += lerobot_decoding_notes(settings, checkpoint / "config.json") if variant == "pi0_fast" else []
        notes.append(norm_note)
        if norm_stats is None and norm_note is None and tokenizer is not None:
            notes.append("it has no normaliser statistics (no policy_preprocessor.json with a normalizer_processor "
                         "step), so the processor has none: add them with PiProcessor.from_pretrained(folder, "
                         "norm_stats=FILE).save_pretrained(folder)")
        conventions = "lerobot"
        if architecture is None:
            notes.append(siglip_heads(config.vision_config.hidden_size)[1])
    else:
        config = transformers_config(settings, TRANSFORMERS_VARIANTS[source], image_keys)
        norm_stats, norm_mode = transformers_norm_stats(checkpoint)
    state_dict = convert_state_dict(tensors, config, DTYPES.get(dtype), CONFIG_HINT if config_path else ARCHITECTURE_HINT)
    config.dtype = str(weights_dtype(state_dict)).removeprefix("torch.")
    processor = None
    if tokenizer is not None:
        processor = build_processor(config, tokenizer, fast_tokenizer, norm_stats, norm_mode, conventions=conventions,
                                    robot_action_dim=robot_action_dim)
    elif norm_stats is not None:  # they live in the processor, which the tokenizer is needed to write
        notes.append("its normalisation statistics are not kept: no --tokenizer, so no processor is written (pass "
                     "--tokenizer to keep them)")
    for note in filter(None, notes):
        print(f"{checkpoint.name}: {note}")
    kind = "LeRobot checkpoint" if source == "lerobot" else f"transformers {TRANSFORMERS_NAMES[config.variant]} checkpoint"
    return write_folder(output, config, state_dict, checkpoint.resolve().name, processor, source_kind=kind, **card)


def add_arguments(parser: argparse.ArgumentParser, source: str) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, help="folder with config.json and model.safetensors")
    parser.add_argument("--output", required=True, help="folder to write (must not exist, or be empty)")
    if source == "lerobot":
        parser.add_argument("--config", help="PiConfig JSON whose architecture replaces the one inferred from the "
                                             "tensors' shapes")
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

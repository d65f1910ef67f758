"""openpi (JAX, orbax) checkpoints -> Hugging Face folders that `AutoModel.from_pretrained` loads.

    pi convert openpi --checkpoint DIR --output OUT [--config NAME | --robot robot.json] [--variant pi0|pi05|pi0_fast] \\
        [--action-horizon N] [--max-token-len N] [--dtype float32|bfloat16] \\
        [--tokenizer paligemma_tokenizer.model] [--fast-tokenizer FOLDER] [--asset-id ID | --norm-stats FILE] \\
        [--robot-action-dim N] [--lora-alpha A] [--license ID] [--base-model ORG/NAME] [--push-to-hub ORG/NAME [--private]]

DIR is an openpi checkpoint folder or its `params/`; both the released layout and the training layout
(every leaf under a trailing `value` key) are read. With `--tokenizer` the output also holds the
processor (tokenizer, image settings and the checkpoint's `assets/<asset_id>/norm_stats.json`), so
that `AutoProcessor.from_pretrained` loads it too; π0-FAST also needs `--fast-tokenizer`. `--norm-stats FILE`
(openpi's norm_stats.json or LeRobot's stats.json) gives statistics the checkpoint does not ship, and
`--robot-action-dim N` the robot's action dims, which post-processing keeps (π0-FAST decodes its tokens into
that many; default: the statistics' size). The variant,
widths, depths, heads, vocabulary and action dim are inferred from the parameter shapes; the action
horizon and prompt length are not in the weights and come from the caller (defaults: the variant's).

`--config NAME` (one of openpi's policy configs, `openpi_configs.OPENPI_CONFIGS`) or `--robot robot.json`
(a user's own) fixes all that is not in the weights — horizon, prompt length, state in the prompt, asset
id, camera layout, robot transforms, server metadata — and records it in the processor, so that the
processor, the pipeline and `pi serve` read the robot's raw observations and answer in its commands with
no flags. The statistics must then exist and cover the robot's state and action dims. Every openpi parameter must map onto exactly one
model parameter of the right shape and every model parameter must be filled: otherwise the
conversion stops with a message naming the parameters, exits non-zero and leaves no output behind. A LoRA
fine-tune (openpi's `*_low_mem_finetune` configs) converts to a plain model: its adapters are added into the
weights they adapt (`openpi_lora`).

The layout facts used below (einsum weight shapes, flax kernels [in, out], stacked layers) are the
reference's; the mapping works on any tensor, so the full-size mapping can be checked on the meta
device without weights.
"""

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from configuration_pi import PiConfig
from configuration_pi.configuration_pi import FLOW_VARIANTS, VARIANTS
from conversion.convert_lerobot import check_source_kind
from conversion.hf_folder import (DTYPES, ConversionError, build_processor, check_output, check_tokenizers, expected_shapes,
                                  write_folder)
from conversion.openpi_configs import OPENPI_CONFIGS, PolicyConfig, openpi_config
from conversion.openpi_lora import check_lora_alpha, merge_lora
from conversion.push import add_publish_arguments, card_options, publish
from processing_pi import NormStats

IMG = "PaliGemma/img"
LLM = "PaliGemma/llm"
# The flow-matching projections at the top level of the checkpoint, with the same names in our model.
FLOW_PROJECTIONS = {
    "pi0": ("state_proj", "action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out"),
    "pi05": ("action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out"),
    "pi0_fast": (),
}

# ---- reading ---------------------------------------------------------------------------------------


def load_openpi_params(checkpoint: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads an orbax params checkpoint into {"a/b/c": array}, dropping a trailing `value` level."""
    try:
        import jax
        import orbax.checkpoint as ocp
    except ImportError as err:
        raise ConversionError('Reading openpi checkpoints needs jax and orbax: pip install -e ".[convert]"') from err

    path = Path(checkpoint).resolve()
    if not path.is_dir():
        raise ConversionError(f"{checkpoint}: no such folder.")
    if (path / "params").is_dir():
        path = path / "params"
    if not (path / "_METADATA").exists():
        check_source_kind(Path(checkpoint), "openpi")
        raise ConversionError(f"{checkpoint} is not an orbax checkpoint (no _METADATA in it or in its params/).")
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.metadata(path).item_metadata.tree
        if "params" not in tree:
            raise ConversionError(f"{checkpoint} has no 'params' item; found {sorted(tree)}.")
        item = {"params": tree["params"]}
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(restore_type=np.ndarray), item)
        params = checkpointer.restore(path, ocp.args.PyTreeRestore(item=item, restore_args=restore_args))["params"]

    flat = dict(_flatten(params))
    if flat and all(key.endswith("/value") for key in flat):
        flat = {key.removesuffix("/value"): value for key, value in flat.items()}
    return flat


def _flatten(tree: dict, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", np.asarray(value)


# ---- the architecture, from shapes ------------------------------------------------------------------


def detect_variant(keys) -> str:
    """π0.5 has time_mlp_in, π0 has state_proj, π0-FAST has no action expert (no `_1` layers)."""
    keys = set(keys)
    if "time_mlp_in/kernel" in keys:
        return "pi05"
    if "state_proj/kernel" in keys:
        return "pi0"
    if f"{LLM}/layers/attn/q_einsum_1/w" not in keys:
        return "pi0_fast"
    raise ConversionError("The checkpoint has an action expert but neither π0 (state_proj) nor π0.5 (time_mlp_in) projections.")


def infer_config(
    params: dict, variant: str | None = None, action_horizon: int | None = None, max_token_len: int | None = None,
    asked_by: str = "--variant",
) -> PiConfig:
    """The `PiConfig` whose parameters have these shapes; horizon and prompt length from the caller. `asked_by` names
    what asked for `variant`, for the error when the weights are of another."""
    found = detect_variant(params)
    variant = variant or found
    if variant not in VARIANTS:
        raise ConversionError(f"Unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}.")
    if found != variant:
        raise ConversionError(f"{asked_by} is for a {variant} checkpoint, but the checkpoint is a {found} checkpoint.")

    def shape(key):
        if key not in params:
            raise ConversionError(f"The checkpoint is missing the parameter {key}.")
        return tuple(params[key].shape)

    patch, _, _, vision_width = shape(f"{IMG}/embedding/kernel")
    num_patches = shape(f"{IMG}/pos_embedding")[1]
    vision_depth, _, vision_heads, _ = shape(f"{IMG}/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel")
    vision_mlp = shape(f"{IMG}/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel")[-1]
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": vision_width,
        "intermediate_size": vision_mlp,
        "num_hidden_layers": vision_depth,
        "num_attention_heads": vision_heads,
        "patch_size": patch,
        "image_size": int(round(num_patches**0.5)) * patch,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": False,
    }
    vocab_size = shape(f"{LLM}/embedder/input_embedding")[0]
    text = _gemma_config(shape, "", vocab_size=vocab_size)
    flow = {}
    if variant in FLOW_VARIANTS:
        expert = _gemma_config(shape, "_1", vocab_size=1, pad_token_id=None, bos_token_id=None, eos_token_id=None)
        flow = {"expert_config": expert, "action_dim": shape("action_in_proj/kernel")[0]}
    try:
        return PiConfig(
            variant=variant,
            vision_config=vision,
            text_config=text,
            action_horizon=action_horizon,
            max_token_len=max_token_len,
            **flow,
        )
    except ValueError as err:
        raise ConversionError(f"The checkpoint's shapes do not describe a valid π model: {err}") from err


def _gemma_config(shape, suffix: str, **extra) -> dict:
    depth, heads, width, head_dim = shape(f"{LLM}/layers/attn/q_einsum{suffix}/w")
    kv_heads = shape(f"{LLM}/layers/attn/kv_einsum{suffix}/w")[2]
    mlp = shape(f"{LLM}/layers/mlp{suffix}/gating_einsum")[-1]
    return {
        "model_type": "gemma",
        "hidden_size": width,
        "intermediate_size": mlp,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "gelu_pytorch_tanh",
        "use_bidirectional_attention": True,
        **extra,
    }


# ---- the mapping ------------------------------------------------------------------------------------


class _Source:
    """The openpi parameters as torch tensors, remembering which were read (and the last one, for errors)."""

    def __init__(self, params: dict):
        self.params = params
        self.used: set[str] = set()
        self.last: str | None = None

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.params:
            raise ConversionError(f"The checkpoint is missing the parameter {key}.")
        self.used.add(key)
        self.last = key
        value = self.params[key]
        return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))


def _dense(src: _Source, key: str, target: str):
    """flax / nnx Dense: kernel [in, out] -> torch Linear weight [out, in]."""
    yield f"{target}.weight", src[f"{key}/kernel"].T
    yield f"{target}.bias", src[f"{key}/bias"]


def _layer_norm(src: _Source, key: str, target: str, layer: int | None = None):
    scale, bias = src[f"{key}/scale"], src[f"{key}/bias"]
    yield f"{target}.weight", scale if layer is None else scale[layer]
    yield f"{target}.bias", bias if layer is None else bias[layer]


def _siglip(src: _Source, config: PiConfig):
    tower = "vision_tower"
    yield f"{tower}.embeddings.patch_embedding.weight", src[f"{IMG}/embedding/kernel"].permute(3, 2, 0, 1)
    yield f"{tower}.embeddings.patch_embedding.bias", src[f"{IMG}/embedding/bias"]
    yield f"{tower}.embeddings.position_embedding.weight", src[f"{IMG}/pos_embedding"][0]
    block = f"{IMG}/Transformer/encoderblock"
    attn = f"{block}/MultiHeadDotProductAttention_0"
    for layer in range(config.vision_config.num_hidden_layers):
        target = f"{tower}.encoder.layers.{layer}"
        yield from _layer_norm(src, f"{block}/LayerNorm_0", f"{target}.layer_norm1", layer)
        yield from _layer_norm(src, f"{block}/LayerNorm_1", f"{target}.layer_norm2", layer)
        for name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            # kernel [W, heads, head_dim], bias [heads, head_dim]
            yield f"{target}.self_attn.{proj}.weight", src[f"{attn}/{name}/kernel"][layer].flatten(1).T
            yield f"{target}.self_attn.{proj}.bias", src[f"{attn}/{name}/bias"][layer].flatten()
        yield f"{target}.self_attn.out_proj.weight", src[f"{attn}/out/kernel"][layer].flatten(0, 1).T
        yield f"{target}.self_attn.out_proj.bias", src[f"{attn}/out/bias"][layer]
        for i, fc in enumerate(("fc1", "fc2")):
            yield f"{target}.mlp.{fc}.weight", src[f"{block}/MlpBlock_0/Dense_{i}/kernel"][layer].T
            yield f"{target}.mlp.{fc}.bias", src[f"{block}/MlpBlock_0/Dense_{i}/bias"][layer]
    yield from _layer_norm(src, f"{IMG}/Transformer/encoder_norm", f"{tower}.post_layernorm")
    yield from _dense(src, f"{IMG}/head", "multi_modal_projector")


def _gemma_norm(src: _Source, key: str, target: str, adaptive: bool, layer: int | None = None):
    """Gemma RMSNorm `scale`, or an adaRMS `Dense_0` (kernel [D, 3D]) for the π0.5 expert."""
    if adaptive:
        kernel, bias = src[f"{key}/Dense_0/kernel"], src[f"{key}/Dense_0/bias"]
        if layer is not None:
            kernel, bias = kernel[layer], bias[layer]
        yield f"{target}.modulation.weight", kernel.T
        yield f"{target}.modulation.bias", bias
    else:
        scale = src[f"{key}/scale"]
        yield f"{target}.weight", scale if layer is None else scale[layer]


def _gemma(src: _Source, depth: int, suffix: str, target_root: str, adaptive: bool):
    """One expert's stack: `suffix` "" is the language model, "_1" the action expert."""
    layers = f"{LLM}/layers"
    for layer in range(depth):
        target = f"{target_root}.layers.{layer}"
        q = src[f"{layers}/attn/q_einsum{suffix}/w"][layer]  # [N, D, H]
        yield f"{target}.self_attn.q_proj.weight", q.permute(0, 2, 1).flatten(0, 1)
        kv = src[f"{layers}/attn/kv_einsum{suffix}/w"][layer]  # [2, K, D, H], keys then values
        yield f"{target}.self_attn.k_proj.weight", kv[0].permute(0, 2, 1).flatten(0, 1)
        yield f"{target}.self_attn.v_proj.weight", kv[1].permute(0, 2, 1).flatten(0, 1)
        out = src[f"{layers}/attn/attn_vec_einsum{suffix}/w"][layer]  # [N, H, D]
        yield f"{target}.self_attn.o_proj.weight", out.flatten(0, 1).T
        gating = src[f"{layers}/mlp{suffix}/gating_einsum"][layer]  # [2, D, F], gate then up
        yield f"{target}.mlp.gate_proj.weight", gating[0].T
        yield f"{target}.mlp.up_proj.weight", gating[1].T
        yield f"{target}.mlp.down_proj.weight", src[f"{layers}/mlp{suffix}/linear"][layer].T  # [F, D]
        yield from _gemma_norm(src, f"{layers}/pre_attention_norm{suffix}", f"{target}.input_layernorm", adaptive, layer)
        yield from _gemma_norm(src, f"{layers}/pre_ffw_norm{suffix}", f"{target}.post_attention_layernorm", adaptive, layer)
    yield from _gemma_norm(src, f"{LLM}/final_norm{suffix}", f"{target_root}.norm", adaptive)


def _mapping(src: _Source, config: PiConfig):
    yield from _siglip(src, config)
    yield "language_model.embed_tokens.weight", src[f"{LLM}/embedder/input_embedding"]
    depth = config.text_config.num_hidden_layers
    yield from _gemma(src, depth, "", "language_model", adaptive=False)
    if config.is_flow:
        yield from _gemma(src, depth, "_1", "action_expert", adaptive=config.use_adarms)
    for name in FLOW_PROJECTIONS[config.variant]:
        yield from _dense(src, name, name)


def convert_params(params: dict, config: PiConfig, dtype: torch.dtype | None = None, progress: bool = False) -> dict:
    """openpi parameters (arrays or tensors, meta ones included) -> our state dict, checked both ways."""
    expected = expected_shapes(config)
    src = _Source(params)
    state_dict = {}
    mapping = _mapping(src, config)
    with tqdm(total=len(expected), desc="converting", unit="tensor", disable=not progress) as bar:
        while True:
            try:
                name, tensor = next(mapping)
            except StopIteration:
                break
            except (RuntimeError, IndexError) as err:
                shape = tuple(params[src.last].shape)
                raise ConversionError(f"The parameter {src.last} has an unexpected shape {shape}: {err}") from err
            if name not in expected:
                raise ConversionError(f"{src.last} maps onto {name}, which the model does not have.")
            if tuple(tensor.shape) != expected[name]:
                raise ConversionError(
                    f"The parameter {src.last} gives {name} the shape {tuple(tensor.shape)}; the model needs {expected[name]}."
                )
            # A copy of its own: slices of one stacked array must not share storage in the saved file.
            state_dict[name] = tensor.to(dtype=dtype or tensor.dtype, memory_format=torch.contiguous_format, copy=True)
            bar.update()

    unused = sorted(set(params) - src.used)
    if unused:
        raise ConversionError(f"The checkpoint has parameters the {config.variant} model does not use: {', '.join(unused)}.")
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ConversionError(f"No checkpoint parameter fills: {', '.join(missing)}.")
    return state_dict


# ---- the processor ----------------------------------------------------------------------------------


def find_norm_stats(checkpoint: str | os.PathLike, asset_id: str | None = None) -> NormStats | None:
    """`assets/<asset_id>/norm_stats.json` beside the params (an asset id may hold a `/`); None when the
    checkpoint has no assets."""
    root = Path(checkpoint).resolve()
    if root.name == "params":
        root = root.parent
    assets = root / "assets"
    found = {path.parent.relative_to(assets).as_posix(): path for path in sorted(assets.rglob("norm_stats.json"))}
    if asset_id is not None:
        if asset_id not in found:
            raise ConversionError(f"No assets/{asset_id}/norm_stats.json in {root}; found: {', '.join(found) or 'none'}.")
        return NormStats.from_json(found[asset_id])
    if len(found) > 1:
        raise ConversionError(f"{root} has norm stats for several assets ({', '.join(found)}): choose one with --asset-id.")
    return NormStats.from_json(next(iter(found.values()))) if found else None


def read_norm_stats(checkpoint: str | os.PathLike, asset_id: str | None, norm_stats: str | os.PathLike | None) -> NormStats | None:
    """The statistics of `--norm-stats FILE` (openpi's norm_stats.json or LeRobot's stats.json), else the
    checkpoint's own (`find_norm_stats`)."""
    if norm_stats is None:
        return find_norm_stats(checkpoint, asset_id)
    if asset_id is not None:
        raise ConversionError("--asset-id picks the checkpoint's statistics and --norm-stats replaces them: pass one.")
    try:
        return NormStats.from_json(norm_stats)
    except (OSError, ValueError) as err:
        raise ConversionError(f"Cannot read the statistics of --norm-stats {norm_stats}: {err}") from err


def with_robot_action_dim(processor, robot_action_dim: int | None):
    """The processor with `--robot-action-dim` set."""
    if robot_action_dim is None:
        return processor
    try:
        return processor.replace(robot_action_dim=robot_action_dim)
    except ValueError as err:
        raise ConversionError(f"--robot-action-dim {robot_action_dim}: {err}") from err


def fit_norm_stats(stats: NormStats | None, policy: PolicyConfig, source: str) -> NormStats:
    """The statistics of a robot policy, cut to its state and action dims (openpi reads only those); fewer
    dims than the robot's, or none at all, are an error now rather than at the first request."""
    if stats is None:
        raise ConversionError(f"{source} has no assets/{policy.asset_id}/norm_stats.json, which the policy needs.")
    dims = {"state": policy.robot.state_dim, "actions": policy.robot.action_dim}
    for key, dim in dims.items():
        found = getattr(stats, key)
        if found is None:
            raise ConversionError(f"{source}'s statistics have no '{key}' entry.")
        if dim is not None and found.dim < dim:
            raise ConversionError(f"{source}'s '{key}' statistics cover {found.dim} dims; the robot has {dim}.")
    return stats.cut(**dims)


def _apply_robot(config: PiConfig, policy: PolicyConfig) -> None:
    """The robot's cameras (and π0-FAST's action dims) into the model's config."""
    config.image_keys = list(policy.robot.cameras)
    if config.variant == "pi0_fast" and policy.robot.action_dim:  # the dims its FAST tokens decode to
        config.action_dim = policy.robot.action_dim


def load_policy(config_name: str | None, robot_file: str | os.PathLike | None) -> PolicyConfig | None:
    if config_name and robot_file:
        raise ConversionError("Pass --config (one of openpi's) or --robot (your own), not both.")
    try:
        if config_name:
            return openpi_config(config_name)
        return PolicyConfig.from_json(robot_file) if robot_file else None
    except ValueError as err:
        raise ConversionError(str(err)) from err


# ---- writing ----------------------------------------------------------------------------------------


def convert_openpi(
    checkpoint: str | os.PathLike,
    variant: str | None,
    output: str | os.PathLike,
    action_horizon: int | None = None,
    max_token_len: int | None = None,
    dtype: str = "float32",
    progress: bool = True,
    tokenizer: str | os.PathLike | None = None,
    fast_tokenizer: str | os.PathLike | None = None,
    asset_id: str | None = None,
    policy: PolicyConfig | None = None,
    norm_stats: str | os.PathLike | None = None,
    robot_action_dim: int | None = None,
    policy_source: str = "the policy config",
    lora_alpha: float | None = None,
    **card,
) -> Path:
    """Converts and writes `output` (config, safetensors, model card, remote code, and with `tokenizer` the
    processor) atomically; returns its path. `policy` (`openpi_config(name)` or a user's `PolicyConfig`) fixes
    what the weights do not say. `norm_stats` (a JSON file) replaces the checkpoint's statistics; `robot_action_dim`
    sets the robot's action dims; `policy_source` names where `policy` came from (`--config NAME`), for errors.
    A LoRA fine-tune's adapters are added into the weights they adapt (`openpi_lora`; `lora_alpha`: their alpha,
    default each one's rank). `card`: `write_folder`'s model-card options."""
    if dtype not in DTYPES:
        raise ConversionError(f"Unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}.")
    output = check_output(output)
    processor_flags = {"--fast-tokenizer": fast_tokenizer, "--asset-id": asset_id, "--norm-stats": norm_stats,
                       "--robot-action-dim": robot_action_dim}
    given = [flag for flag, value in processor_flags.items() if value is not None]
    if tokenizer is None and given:
        raise ConversionError(f"{' and '.join(given)} {'builds' if len(given) == 1 else 'build'} the processor, which "
                              f"also needs --tokenizer.")
    check_tokenizers(tokenizer, fast_tokenizer)
    check_lora_alpha(lora_alpha)
    for flag, value in (("--action-horizon", action_horizon), ("--max-token-len", max_token_len)):
        if value is not None and value < 1:
            raise ConversionError(f"{flag} must be at least 1, got {value}.")
    asked_by = policy_source if policy is not None and variant is None else "--variant"  # named if the variant differs
    if policy is not None:
        if robot_action_dim is not None:
            raise ConversionError("The policy config's robot fixes the action dims: drop --robot-action-dim (or declare "
                                  "action_dim in a --robot file).")
        if action_horizon is not None or max_token_len is not None:
            raise ConversionError("The policy config fixes the action horizon and prompt length: drop --action-horizon "
                                  "and --max-token-len (or declare them in a --robot file).")
        if tokenizer is None:
            raise ConversionError("A robot policy is recorded in the processor, which needs --tokenizer.")
        if variant is not None and policy.variant is not None and variant != policy.variant:
            raise ConversionError(f"--variant {variant} contradicts {policy_source}'s variant {policy.variant}.")
        variant = variant or policy.variant
        action_horizon, max_token_len = policy.action_horizon, policy.max_token_len
        asset_id = asset_id or (policy.asset_id if norm_stats is None else None)
    stats = read_norm_stats(checkpoint, asset_id, norm_stats) if tokenizer is not None else None  # before the weights

    params, merged = merge_lora(load_openpi_params(checkpoint), lora_alpha)
    if merged:
        ranks = " and ".join(str(rank) for rank in sorted(set(merged.values())))
        print(f"{Path(checkpoint).name}: its LoRA adapters (rank {ranks}) are added into the {len(merged)} weights they "
              f"adapt")
    config = infer_config(params, variant, action_horizon, max_token_len, asked_by)
    config.dtype = dtype
    processor = None
    if policy is not None:
        _apply_robot(config, policy)
        stats = fit_norm_stats(stats, policy, str(norm_stats or checkpoint))
        processor = build_processor(config, tokenizer, fast_tokenizer, stats,
                                    discrete_state_input=policy.discrete_state_input, robot=policy.robot)
    elif tokenizer is not None:
        processor = with_robot_action_dim(build_processor(config, tokenizer, fast_tokenizer, stats), robot_action_dim)
    state_dict = convert_params(params, config, DTYPES[dtype], progress=progress)

    source = Path(checkpoint).resolve()
    name = source.parent.name if source.name == "params" else source.name
    return write_folder(output, config, state_dict, name, processor, merged_lora=bool(merged), **card)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, help="openpi checkpoint folder, or its params/ folder")
    parser.add_argument("--config", help=f"openpi's policy config the checkpoint was trained with: {', '.join(OPENPI_CONFIGS)}")
    parser.add_argument("--robot", help="your own robot's policy config, a JSON file (see the README)")
    parser.add_argument("--variant", choices=VARIANTS, help="check the checkpoint is this variant (default: what its weights say)")
    parser.add_argument("--output", required=True, help="folder to write (must not exist, or be empty)")
    parser.add_argument("--action-horizon", type=int, default=None, help="action chunk length (default: 50 flow, 32 FAST)")
    parser.add_argument("--max-token-len", type=int, default=None, help="prompt length (default: 48 π0, 200 π0.5, 250 FAST)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--tokenizer", help="SentencePiece model (openpi's paligemma_tokenizer.model): also write the processor")
    parser.add_argument("--fast-tokenizer", help="FAST tokenizer folder (π0-FAST's processor)")
    parser.add_argument("--asset-id", help="which assets/<asset_id>/norm_stats.json to use when there are several")
    parser.add_argument("--norm-stats", metavar="FILE", help="statistics to use instead of the checkpoint's: openpi's "
                        "norm_stats.json or LeRobot's meta/stats.json")
    parser.add_argument("--lora-alpha", type=float, metavar="A", help="a LoRA fine-tune's alpha, which scales its "
                        "attention adapters by A / rank (default: the rank, as openpi's gemma_2b_lora and gemma_300m_lora)")
    parser.add_argument("--robot-action-dim", type=int, metavar="N", help="the robot's action dims, which post-processing "
                        "keeps (π0-FAST decodes its tokens into that many; default: the statistics' size)")
    return add_publish_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.config, args.robot)
        path = convert_openpi(args.checkpoint, args.variant, args.output, args.action_horizon, args.max_token_len, args.dtype,
                              tokenizer=args.tokenizer, fast_tokenizer=args.fast_tokenizer, asset_id=args.asset_id,
                              policy=policy, norm_stats=args.norm_stats, robot_action_dim=args.robot_action_dim,
                              policy_source=f"--config {args.config}" if args.config else f"--robot {args.robot}",
                              lora_alpha=args.lora_alpha,
                              **card_options(args))
    except (ConversionError, OSError) as err:  # OSError: writing the folder (a full disk, no permission)
        print(f"pi convert openpi: error: {err}", file=sys.stderr)
        return 1
    return publish(args, path, "pi convert openpi")


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m conversion.convert_openpi", description=__doc__.split("\n")[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""What every converter shares: the strict check of a converted state dict against the model it must
fill (names, shapes, finite values), and the atomic writing of the Hugging Face folder (config, sharded safetensors, model card,
processor, remote code)."""

import contextlib
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict

from configuration_pi import PiConfig
from model_cards import converted_from, render_model_card
from modeling_pi.input_checks import check_source
from processing_pi import FastActionTokenizer, NormStats, PiImageProcessor, PiProcessor, Robot, tokenizer_from_sentencepiece

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ConversionError(ValueError):
    """The checkpoint cannot be converted as asked; the message names the parameters at fault."""


def expected_shapes(config: PiConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter of the model built from `config` (on the meta device: no memory)."""
    from modeling_pi import PiForActionGeneration

    with torch.device("meta"):
        model = PiForActionGeneration(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _some(names: list[str], most: int = 10) -> str:
    """At most `most` names, and how many more there are."""
    listed = ", ".join(names[:most])
    return listed + (f" and {len(names) - most} more" if len(names) > most else "")


def check_complete(state_dict: dict, config: PiConfig, source: str = "the checkpoint", hint: str = "") -> None:
    """Every model parameter is filled with the right shape, and nothing else is there; errors name at most
    ten tensors, then `hint` (what to try)."""
    expected = expected_shapes(config)
    hint = f" {hint}" if hint else ""
    unknown = sorted(set(state_dict) - set(expected))
    if unknown:
        raise ConversionError(f"{source} has {len(unknown)} parameter(s) the {config.variant} model does not have: "
                              f"{_some(unknown)}.{hint}")
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ConversionError(f"{len(missing)} model parameter(s) are filled by no tensor of {source}: {_some(missing)}.{hint}")
    wrong = [f"{name} {tuple(tensor.shape)} (the model needs {expected[name]})" for name, tensor in sorted(state_dict.items())
             if tuple(tensor.shape) != expected[name]]
    if wrong:
        raise ConversionError(f"{len(wrong)} tensor(s) of {source} have the wrong shape: {_some(wrong)}.{hint}")


def check_finite(state_dict: dict, source: str = "the checkpoint") -> None:
    """Every tensor is finite: a damaged checkpoint (zeroed or flipped bytes) stops the conversion, naming the tensors."""
    damaged = [f"{name} ({int((~torch.isfinite(tensor)).sum())} NaN/inf)" for name, tensor in sorted(state_dict.items())
               if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if damaged:
        raise ConversionError(f"{len(damaged)} tensor(s) of {source} hold non-finite values: {_some(damaged)}. The "
                              "checkpoint is damaged; nothing was written.")


def weights_dtype(state_dict: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype most of the weights have: a bfloat16 model keeps its flow head float32."""
    sizes = Counter()
    for tensor in state_dict.values():
        sizes[tensor.dtype] += tensor.numel()
    return sizes.most_common(1)[0][0]


def check_tokenizers(tokenizer: str | os.PathLike | None, fast_tokenizer: str | os.PathLike | None) -> None:
    """The processor's tokenizers exist, checked before any weight is read: `tokenizer` a SentencePiece file,
    `fast_tokenizer` (which only a processor uses) a folder or a Hub id."""
    if fast_tokenizer is not None and tokenizer is None:
        raise ConversionError("--fast-tokenizer builds the processor, which also needs --tokenizer.")
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise ConversionError(f"--tokenizer {tokenizer}: no such file (a SentencePiece model, e.g. paligemma_tokenizer.model).")
    if fast_tokenizer is not None:
        try:
            check_source(fast_tokenizer, "--fast-tokenizer")
        except ValueError as err:
            raise ConversionError(str(err)) from None


def build_processor(
    config: PiConfig, tokenizer: str, fast_tokenizer: str | None, norm_stats: NormStats | None, norm_mode: str | None = None,
    discrete_state_input: bool | None = None, robot: Robot | None = None, conventions: str | None = None,
    robot_action_dim: int | None = None,
) -> PiProcessor:
    """The processor of a converted folder: the SentencePiece tokenizer, the image size and cameras of
    `config`, the checkpoint's statistics, the robot's layout when the policy config gives one, and the
    pre-processing conventions of the checkpoint's origin ("openpi" or "lerobot")."""
    if config.variant == "pi0_fast" and fast_tokenizer is None:
        raise ConversionError("A π0-FAST processor needs its FAST tokenizer: pass --fast-tokenizer.")
    check_tokenizers(tokenizer, fast_tokenizer)
    try:
        return PiProcessor(
            PiImageProcessor(size=config.vision_config.image_size, conventions=conventions or "openpi"),
            tokenizer_from_sentencepiece(tokenizer),
            action_tokenizer=FastActionTokenizer.from_pretrained(fast_tokenizer) if fast_tokenizer else None,
            norm_stats=norm_stats,
            variant=config.variant,
            image_keys=config.image_keys,
            max_token_len=config.max_token_len,
            action_dim=config.action_dim,
            action_horizon=config.action_horizon,
            norm_mode=norm_mode,
            discrete_state_input=discrete_state_input,
            robot=robot,
            conventions=conventions,
            robot_action_dim=robot_action_dim,
        )
    except (OSError, ValueError) as err:
        raise ConversionError(f"Cannot build the processor: {err}") from err


def check_output(output: str | os.PathLike) -> Path:
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConversionError(f"{output} already exists and is not an empty folder; refusing to overwrite it.")
    blocking = next((parent for parent in output.absolute().parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:  # checked now: the folder is made only once everything is converted
        raise ConversionError(f"{output}: {blocking} is a file, so no folder can be made there.")
    return output


@contextlib.contextmanager
def staged_folder(output: Path):
    """A private staging folder beside `output` to write into; renamed into place (with the usual permissions)
    when the block completes, removed when it fails, so that a failed write leaves nothing behind."""
    output = check_output(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        yield staging
        umask = os.umask(0)
        os.umask(umask)
        for path in (staging, *staging.rglob("*")):  # mkdtemp makes the folder private; publish it normally
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        if output.exists():
            output.rmdir()
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_folder(
    output: Path,
    config: PiConfig,
    state_dict: dict,
    source: str,
    processor: PiProcessor | None = None,
    source_kind: str = "openpi checkpoint",
    license: str | None = None,
    base_model: str | None = None,
    repo_id: str | None = None,
    merged_lora: bool = False,
) -> Path:
    """Writes the folder into a private staging folder beside `output`, then renames it into place: a
    failed conversion leaves nothing behind. `source`, `source_kind`, `license`, `base_model`, `repo_id`
    (where it will be published; default: the folder's name) and `merged_lora` (LoRA adapters were added into
    the weights) go into the model card; without a license or base model, the card names only what the
    architecture tells (`model_cards.known_lineage`)."""
    from conversion.remote_code import add_remote_code

    output = check_output(output)
    check_finite(state_dict, source)
    with staged_folder(output) as staging:
        config.save_pretrained(staging)
        save_torch_state_dict(state_dict, staging)
        num_parameters = sum(t.numel() for t in state_dict.values())
        stats = processor.norm_stats.to_dict() if processor is not None and processor.norm_stats is not None else None
        provenance = converted_from(source, source_kind, str(config.dtype).removeprefix("torch."), merged_lora)
        card = render_model_card(config, num_parameters, repo_id or output.name, provenance, license, base_model, stats,
                                 processor)
        card.save(staging / "README.md")
        if processor is not None:
            processor.save_pretrained(staging)
        add_remote_code(staging)
    return output

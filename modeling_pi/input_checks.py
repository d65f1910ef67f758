"""Validation of the model inputs users pass (names, shapes, dtypes, ranges), and of the model sources and devices
the commands take, with errors that name the problem.

A VLA model silently broadcasting a wrong-sized state or a NaN action into a plausible-looking chunk
is the failure mode that costs robot time; every check here turns one into a `ValueError` instead.

Shapes are checked everywhere. Values (finite, in range) are checked only in tensors on the CPU, where
reading them costs nothing: on an accelerator, reading a value back waits for every queued kernel. There
the processor, the pipeline and the server have already checked the same values on the CPU, before moving
them (and a non-finite chunk is flagged `valid=False` by `post_process`).
"""

import math
import sys
from pathlib import Path

import numpy as np
import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id

from configuration_pi import PiConfig


def check_device(device, name: str = "device") -> None:
    """Raises `ValueError` where torch cannot place a tensor on `device`: a name it does not know, or a backend this
    build lacks (torch says so with a RuntimeError or an AssertionError); and for the meta device, which takes
    tensors but computes nothing."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise ValueError(f"{name} {device}: {err}") from err
    if torch.device(device).type == "meta":
        raise ValueError(f"{name} {device}: tensors on the meta device hold no values, so nothing can run there.")


def is_hub_id(name: str) -> bool:
    """ORG/NAME, as the Hub client validates repository ids."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name


def check_source(source, name: str = "--model") -> None:
    """Raises `ValueError` for a `source` that is neither a folder here nor a Hub id (ORG/NAME), before anything
    tries to download it (the Hub client's own complaint is about repository names).

    A Hub id whose ORG is a folder here is more likely a mistyped path: it is still looked up on the Hub (a
    repository can share its organisation's name with a local folder), but stderr says so first, as the Hub
    client can spend a minute retrying before it fails offline."""
    path = Path(source)
    if path.is_dir():
        return
    if path.exists():
        raise ValueError(f"{name} {source}: not a folder.")
    if not is_hub_id(str(source)):
        raise ValueError(f"{name} {source}: no such folder (nor a Hub id, ORG/NAME).")
    if path.parent.is_dir():
        print(f"{name} {source}: no such folder here, though {path.parent}/ is one; looking for {source} on the Hub.",
              file=sys.stderr)


def check_count(name: str, value) -> None:
    """A whole number of at least 1 (not a bool, not a float): a number of steps or tokens."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}.")


def check_decoding(config: PiConfig, max_new_tokens, temperature, allowed_token_ids):
    """π0-FAST's decoding options, checked; returns `allowed_token_ids` as a 1-D long tensor (or None)."""
    check_count("max_new_tokens", max_new_tokens)
    if not (isinstance(temperature, (int, float, np.number)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature!r}.")
    if allowed_token_ids is None:
        return None
    ids = torch.as_tensor(allowed_token_ids)
    vocab = config.text_config.vocab_size
    if ids.ndim != 1 or ids.is_floating_point() or ids.dtype == torch.bool or ids.numel() == 0:
        raise ValueError(f"allowed_token_ids must be a non-empty 1-D set of integer ids, got {ids.dtype} "
                         f"{list(ids.shape)}.")
    if ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(f"allowed_token_ids must lie in [0, {vocab}), got values in [{ids.min()}, {ids.max()}].")
    return ids.long()


def _tensor(name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__} (a processor's output is one unless "
                         "it was asked for return_tensors='np').")


def _shape(name: str, tensor: torch.Tensor, expected: tuple, meaning: str) -> None:
    """`expected` holds ints or None (any size); the first dimension is always the batch."""
    _tensor(name, tensor)
    if tensor.ndim != len(expected) or any(e is not None and s != e for s, e in zip(tensor.shape, expected)):
        shown = ", ".join("?" if e is None else str(e) for e in expected)
        raise ValueError(f"{name} must have shape [{shown}] ({meaning}), got {list(tensor.shape)}.")


def readable(tensor: torch.Tensor) -> bool:
    """Whether checking `tensor`'s values is cheap: it lies in host memory."""
    return tensor.device.type == "cpu"


def _finite(name: str, tensor: torch.Tensor) -> None:
    if readable(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values.")


PIXEL_TOLERANCE = 1e-3  # float rounding of x / 255 * 2 - 1, nothing more


def _pixel_range(pixel_values: torch.Tensor) -> None:
    """SigLIP reads pixels in [-1, 1]: raw 0..255 values or uint8 images given straight to the model are refused."""
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be floats in [-1, 1], got {pixel_values.dtype}: pass images through the "
                         "processor (it maps 0..255 to [-1, 1]).")
    if not readable(pixel_values):
        return
    _finite("pixel_values", pixel_values)
    low, high = pixel_values.min().item(), pixel_values.max().item()
    if low < -1 - PIXEL_TOLERANCE or high > 1 + PIXEL_TOLERANCE:
        raise ValueError(f"pixel_values must lie in [-1, 1], got values in [{low:g}, {high:g}]: pass images through the "
                         "processor (it maps 0..255 to [-1, 1]).")


def check_inputs(
    config: PiConfig,
    pixel_values: torch.Tensor,
    pixel_attention_mask: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> None:
    """The inputs every variant reads: cameras and prompt. Raises `ValueError` unless they fit `config`."""
    _tensor("pixel_values", pixel_values)  # the two whose dims are read before `_shape` checks them
    _tensor("input_ids", input_ids)
    if pixel_values.ndim != 5:
        raise ValueError(
            f"pixel_values must have shape [batch, cameras, 3, height, width], got {list(pixel_values.shape)}."
        )
    batch, cameras = pixel_values.shape[:2]
    if batch == 0:
        raise ValueError("Empty batch: pixel_values has batch size 0.")
    if cameras != len(config.image_keys):
        raise ValueError(
            f"pixel_values has {cameras} cameras but the model expects {len(config.image_keys)} "
            f"({', '.join(config.image_keys)}); mask absent cameras with pixel_attention_mask instead of dropping them."
        )
    size = config.vision_config.image_size
    _shape("pixel_values", pixel_values, (batch, cameras, 3, size, size), f"{size}x{size} RGB images")
    _pixel_range(pixel_values)
    _shape("pixel_attention_mask", pixel_attention_mask, (batch, cameras), "camera present")
    if readable(pixel_attention_mask):
        blind = (~pixel_attention_mask.bool().any(dim=1)).nonzero().flatten().tolist()
        if blind:  # the chunk would come from the prompt alone, and look like any other
            raise ValueError(f"pixel_attention_mask: example(s) {blind} have no camera present; each needs at least one.")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape [batch, prompt length], got {list(input_ids.shape)}.")
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got {input_ids.dtype}.")
    _shape("input_ids", input_ids, (batch, None), "prompt tokens, batch size of pixel_values")
    _shape("attention_mask", attention_mask, tuple(input_ids.shape), "one flag per prompt token")
    vocab = config.text_config.vocab_size
    if readable(input_ids) and input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab):
        raise ValueError(f"input_ids must lie in [0, {vocab}), got values in [{input_ids.min()}, {input_ids.max()}].")


def check_flow_inputs(
    config: PiConfig,
    batch: int,
    state: torch.Tensor | None = None,
    actions: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    timestep: torch.Tensor | None = None,
    action_is_pad: torch.Tensor | None = None,
    prev_actions: torch.Tensor | None = None,
    prefix_actions: torch.Tensor | None = None,
) -> None:
    """State, action chunk, noise, flow time, padded-step mask, previous chunk and clean-prefix actions of π0 / π0.5."""
    chunk = (batch, config.action_horizon, config.action_dim)
    if config.variant == "pi05" and state is not None:
        raise ValueError("π0.5 reads the robot state in its prompt (the processor writes it there as 256 bins), not as "
                         "a model input: pass no `state`.")
    if config.variant == "pi0":
        if state is None:
            raise ValueError("π0 reads the robot state as a token: pass `state` [batch, action_dim].")
        _shape("state", state, (batch, config.action_dim), "normalised state zero-padded to action_dim")
        _finite("state", state)
    for name, tensor in (("actions", actions), ("noise", noise), ("prev_actions", prev_actions),
                         ("prefix_actions", prefix_actions)):
        if tensor is not None:
            _shape(name, tensor, chunk, "batch, action_horizon, action_dim")
            _finite(name, tensor)
    if timestep is not None:
        _tensor("timestep", timestep)
        if timestep.dim() == 2:
            _shape("timestep", timestep, chunk[:2], "one flow time per action step")
        else:
            _shape("timestep", timestep, (batch,), "one flow time per example, or per action step [batch, action_horizon]")
        _finite("timestep", timestep)
        if readable(timestep) and bool(((timestep < 0) | (timestep > 1)).any()):
            raise ValueError(f"timestep is the flow time, from 0 (the actions) to 1 (noise); got values in "
                             f"[{timestep.min().item():g}, {timestep.max().item():g}].")
    if action_is_pad is not None:
        _shape("action_is_pad", action_is_pad, chunk[:2], "True for steps past the episode end")
        if readable(action_is_pad) and action_is_pad.dtype != torch.bool and bool(
                ((action_is_pad != 0) & (action_is_pad != 1)).any()):
            raise ValueError("action_is_pad must be True/False (or 1/0) per step, got other values.")


def check_fast_inputs(config: PiConfig, input_ids: torch.Tensor, token_type_ids=None, labels=None) -> None:
    """π0-FAST's token roles and training targets, aligned with `input_ids`."""
    if token_type_ids is not None:
        _shape("token_type_ids", token_type_ids, tuple(input_ids.shape), "0 = prefix, 1 = postfix, per prompt token")
        if readable(token_type_ids) and ((token_type_ids != 0) & (token_type_ids != 1)).any():
            raise ValueError("token_type_ids must be 0 (prefix) or 1 (postfix).")
    if labels is not None:
        _shape("labels", labels, tuple(input_ids.shape), "target ids aligned with input_ids, -100 where no loss")
        if not readable(labels):
            return
        vocab = config.text_config.vocab_size
        targets = labels[labels != -100]
        if targets.numel() and (targets.min() < 0 or targets.max() >= vocab):
            raise ValueError(f"labels must be -100 or lie in [0, {vocab}).")
        empty = (labels[:, 1:] == -100).all(dim=1).nonzero().flatten().tolist()  # the first token is never a target
        if empty:
            raise ValueError(f"labels of example(s) {empty} hold no target (all -100): they would train on a loss of 0.")

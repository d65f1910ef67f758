"""Real-time chunking: a new chunk that continues the one the robot is still executing.

A robot executing chunks asynchronously keeps executing the previous chunk while the next one is computed,
and jumps at the boundary unless the new chunk agrees with what it is still doing. With `inference_delay` d
(control steps the computation takes) and `execution_horizon` s (steps executed from a chunk before the next
one is requested), the new chunk's first d actions are executed from the previous chunk anyway, and its
next H − s − d overlap the previous chunk's remainder. `prev_actions` [B, H, D] is that remainder, aligned
to the new chunk's first step. Two ways to respect it, both in `sample_actions(prev_actions=...)`:

- Guidance, for any flow model ("Real-Time Execution of Action Chunking Flow Policies", Black et al. 2025,
  arXiv 2506.07339): at each flow step the predicted clean chunk x_t − t·v is pulled towards `prev_actions`
  with a soft mask over the steps (`prefix_weights`: 1 for i < d, decaying to 0 at H − s), through one
  vector-Jacobian product of that error through the action expert (the prefix's cache is constant).
- A clean prefix, for a model trained with one (`PiConfig.rtc_max_delay`; arXiv 2512.05964): the first d
  steps are given as they are, at flow time 0, and only the rest is integrated.

Time. The paper's flow time τ runs from noise (0) to data (1) and its velocity is data − noise; ours is
t = 1 − τ with velocity noise − data, so its guided velocity v + w·g becomes ours v − w·g, with
g = ∂/∂x_t of −½‖√W ⊙ (prev_actions − (x_t − t·v))‖². Its weight min(β, (1 − τ)/τ · (τ² + (1 − τ)²)/(1 − τ)²)
simplifies to (τ² + (1 − τ)²)/(τ(1 − τ)), which is symmetric in τ ↔ 1 − τ: in our time it is the same
expression of t, (t² + (1 − t)²)/(t(1 − t)), infinite at t = 1 and clipped to β.

Written here because no library runs a guided flow through a model's own KV-cached step.
"""

import math

import torch

from .flow_matching import VelocityFn

SCHEDULES = ("exp", "linear", "ones", "zeros")


def prefix_weights(inference_delay: torch.Tensor, execution_horizon: torch.Tensor, horizon: int, schedule: str) -> torch.Tensor:
    """How strongly each step of the new chunk follows `prev_actions`, [B, H] from per-row d and s [B]:
    1 for the d frozen steps; over [d, H − s) "exp" decays as c·(e^c − 1)/(e − 1) with
    c = (H − s − i)/(H − s − d + 1), "linear" as c, "ones" stays 1, "zeros" is 0; 0 from H − s on."""
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown prefix_schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}.")
    steps = torch.arange(horizon, device=inference_delay.device)[None, :]
    start, end = inference_delay[:, None], horizon - execution_horizon[:, None]
    if schedule == "ones":
        weights = torch.ones(len(start), horizon, device=steps.device)
    elif schedule == "zeros":
        weights = (steps < start).float()
    else:
        weights = ((end - steps) / (end - start + 1)).clamp(0, 1).float()
        weights = torch.where(steps < start, torch.ones_like(weights), weights)
        if schedule == "exp":
            weights = weights * torch.expm1(weights) / math.expm1(1)
    return torch.where(steps >= end, torch.zeros_like(weights), weights)


def guidance_weight(t: float, max_weight: float) -> float:
    """min(β, (t² + (1 − t)²) / (t·(1 − t))): the paper's weight in our time (module docstring)."""
    if t <= 0 or t >= 1:
        return max_weight
    return min(max_weight, (t**2 + (1 - t) ** 2) / (t * (1 - t)))


def guided(velocity: VelocityFn, prev_actions: torch.Tensor, weights: torch.Tensor, max_weight: float) -> VelocityFn:
    """`velocity` guided towards `prev_actions` [B, H, D] with `weights` [B, H]; `velocity` must be
    differentiable in x_t (run with gradients enabled)."""

    def guided_velocity(x_t: torch.Tensor, t: float) -> torch.Tensor:
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            v = velocity(x, t)
            clean = x - t * v
            error = (prev_actions - clean) * weights[..., None]
            (pull,) = torch.autograd.grad(clean, x, grad_outputs=error)
        return v.detach() - guidance_weight(t, max_weight) * pull

    return guided_velocity


def with_fixed_prefix(velocity, frozen: torch.Tensor) -> VelocityFn:
    """For a model trained with a clean prefix: `velocity(x_t, timestep)` with the `frozen` steps [B, H] at flow
    time 0, and their velocity 0, so that the values they start from stay as they are."""

    def fixed_velocity(x_t: torch.Tensor, t: float) -> torch.Tensor:
        return velocity(x_t, torch.where(frozen, 0.0, t)).masked_fill(frozen[..., None], 0.0)

    return fixed_velocity


def continuing(config, velocity, differentiable, noise, prev_actions, inference_delay, execution_horizon,
               max_guidance_weight: float, prefix_schedule: str) -> tuple[VelocityFn, torch.Tensor]:
    """The velocity to integrate, and the point to start from, for a chunk that continues `prev_actions`.

    `velocity(x_t, timestep)` takes flow times [B] or [B, H]; `differentiable(x_t, t)` is the same step with
    a gradient to x_t. With `config.rtc_max_delay`, the first d steps start at `prev_actions` and stay there;
    otherwise they, and the steps after them, are guided (β = `max_guidance_weight`; 0 leaves sampling as it is).
    """
    batch, horizon = noise.shape[:2]
    if inference_delay is None or execution_horizon is None:
        raise ValueError("prev_actions needs inference_delay (steps the computation takes) and execution_horizon "
                         "(steps executed from a chunk before the next is requested).")
    delay = _per_row(inference_delay, batch, noise.device)
    executed = _per_row(execution_horizon, batch, noise.device)
    if bool((delay < 0).any() or (executed < 1).any() or (delay + executed > horizon).any()):
        raise ValueError(f"Need 0 <= inference_delay and 1 <= execution_horizon with inference_delay + execution_horizon "
                         f"<= action_horizon ({horizon}), got {delay.tolist()} and {executed.tolist()}.")
    prev_actions = prev_actions.to(noise)
    if config.rtc_max_delay:
        if bool((delay > config.rtc_max_delay).any()):
            raise ValueError(f"This model was trained with clean prefixes of at most {config.rtc_max_delay} steps "
                             f"(rtc_max_delay), not an inference_delay of {int(delay.max())}.")
        frozen = torch.arange(horizon, device=noise.device)[None, :] < delay[:, None]
        return with_fixed_prefix(velocity, frozen), torch.where(frozen[..., None], prev_actions, noise)
    if not (math.isfinite(max_guidance_weight) and max_guidance_weight >= 0):
        raise ValueError(f"max_guidance_weight must be a finite number >= 0, got {max_guidance_weight}.")
    if max_guidance_weight == 0:
        return lambda x_t, t: velocity(x_t, torch.full((batch,), t, dtype=torch.float32, device=x_t.device)), noise
    if torch.is_inference_mode_enabled():
        raise RuntimeError("Guidance towards prev_actions differentiates the action expert, which torch.inference_mode "
                           "forbids: call generate_actions outside it (it runs under torch.no_grad itself).")
    weights = prefix_weights(delay, executed, horizon, prefix_schedule)
    return guided(differentiable, prev_actions, weights, max_guidance_weight), noise


def _per_row(value, batch: int, device) -> torch.Tensor:
    """An int, or one int per row, as a [B] long tensor."""
    value = torch.as_tensor(value, device=device)
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise ValueError(f"inference_delay and execution_horizon count control steps: ints, got {value.tolist()}.")
    value = value.long()
    if value.dim() == 0:
        return value.expand(batch)
    if tuple(value.shape) != (batch,):
        raise ValueError(f"inference_delay and execution_horizon take an int or one per row ({batch}), got {list(value.shape)}.")
    return value


class FrozenPrefix:
    """The prefix's keys and values in a static cache, read and never written: each layer's keys for the step are
    appended to the prefix's in a new tensor. For a pass that is differentiated, which must not write into the
    cache the next step reads."""

    def __init__(self, cache, prefix_len: int):
        self.cache, self.prefix_len = cache, prefix_len

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.cache.layers[layer_idx]
        prefix = slice(0, self.prefix_len)
        return torch.cat([layer.keys[:, :, prefix], keys], dim=2), torch.cat([layer.values[:, :, prefix], values], dim=2)

    def crop(self, length: int) -> None:
        """Nothing to rewind: nothing was written."""

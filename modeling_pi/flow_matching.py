"""Flow matching over action chunks: flow time, the time embedding, and the ODE solvers.

Convention (the reference's): flow time t=1 is pure noise and t=0 is data. A training pair is
x_t = t·noise + (1−t)·actions with target velocity u = noise − actions; sampling integrates
dx/dt = v(x, t) from t=1 down to t=0 in `num_steps` fixed steps.

Written here rather than taken from a library: the solvers must call the model's own velocity
function (one action-expert pass against a cached prefix) a fixed, known number of times, on batched
tensors, with the reference's time grid — a handful of lines that no dependency of ours provides.
"""

import math
from collections.abc import Callable

import torch

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]


def sample_flow_time(
    batch_size: int, alpha: float, beta: float, scale: float, offset: float, device: torch.device
) -> torch.Tensor:
    """Training flow times `Beta(alpha, beta) * scale + offset`, float32 [B] (biased towards noise)."""
    dist = torch.distributions.Beta(torch.tensor(alpha, device=device), torch.tensor(beta, device=device))
    return (dist.sample((batch_size,)) * scale + offset).float()


def interpolate(actions: torch.Tensor, noise: torch.Tensor, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The point x_t on the straight path from data to noise and the velocity u that moves along it; `time` is
    one flow time per chunk [B] or per action step [B, H]."""
    t = time.reshape(*time.shape, *[1] * (actions.dim() - time.dim())).to(actions.dtype)
    return t * noise + (1 - t) * actions, noise - actions


def time_embedding(time: torch.Tensor, width: int, min_period: float, max_period: float) -> torch.Tensor:
    """Sine-cosine embedding of flow time [...] -> float32 [..., width]: sines first, periods geometric in [min, max]."""
    fraction = torch.linspace(0.0, 1.0, width // 2, dtype=torch.float32, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = time.float()[..., None] * (2 * math.pi / period)
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


def _euler_step(velocity: VelocityFn, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    return x + dt * velocity(x, t)


def _heun_step(velocity: VelocityFn, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    v_start = velocity(x, t)
    v_end = velocity(x + dt * v_start, t + dt)
    return x + dt / 2 * (v_start + v_end)


def _rk4_step(velocity: VelocityFn, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    k1 = velocity(x, t)
    k2 = velocity(x + dt / 2 * k1, t + dt / 2)
    k3 = velocity(x + dt / 2 * k2, t + dt / 2)
    k4 = velocity(x + dt * k3, t + dt)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


SOLVERS = {"euler": _euler_step, "heun": _heun_step, "rk4": _rk4_step}
EVALUATIONS_PER_STEP = {"euler": 1, "heun": 2, "rk4": 4}


def integrate(velocity: VelocityFn, noise: torch.Tensor, num_steps: int, solver: str = "euler") -> torch.Tensor:
    """Integrates dx/dt = velocity(x, t) from t=1 (`noise`) to t=0 in `num_steps` steps of the solver."""
    if solver not in SOLVERS:
        raise ValueError(f"Unknown ODE solver {solver!r}; expected one of {', '.join(SOLVERS)}.")
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}.")
    step = SOLVERS[solver]
    dt = -1.0 / num_steps
    x = noise
    for i in range(num_steps):
        x = step(velocity, x, 1.0 + i * dt, dt)
    return x

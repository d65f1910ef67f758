"""The flow-matching pieces on their own: solvers on an ODE with a known solution, time and its embedding."""

import math

import pytest
import torch

from modeling_pi.flow_matching import EVALUATIONS_PER_STEP, integrate, interpolate, sample_flow_time, time_embedding


def _velocity(x, t):
    """dx/dt = x·cos(t): x(0) = x(1)·exp(sin 0 − sin 1)."""
    return x * math.cos(t)


X1 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
EXACT = X1 * math.exp(-math.sin(1.0))


def _error(solver, steps):
    return (integrate(_velocity, X1, steps, solver) - EXACT).abs().max().item()


@pytest.mark.parametrize("evaluations", [8, 16, 48])
def test_heun_and_rk4_beat_euler_at_equal_function_evaluations(evaluations):
    errors = {s: _error(s, evaluations // EVALUATIONS_PER_STEP[s]) for s in ("euler", "heun", "rk4")}
    assert errors["heun"] < errors["euler"], errors
    assert errors["rk4"] < errors["heun"], errors


@pytest.mark.parametrize("solver, order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_solvers_converge_at_their_order(solver, order):
    coarse, fine = _error(solver, 8), _error(solver, 16)
    assert fine < coarse
    assert math.log2(coarse / fine) == pytest.approx(order, abs=0.3)


def test_integration_calls_the_velocity_at_the_reference_time_grid():
    seen = []
    integrate(lambda x, t: seen.append(t) or torch.zeros_like(x), X1, 4, "euler")
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_interpolation_and_target_velocity():
    actions, noise = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    x_t, target = interpolate(actions, noise, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(x_t[0], noise[0])
    torch.testing.assert_close(x_t[1], actions[1])
    torch.testing.assert_close(target, noise - actions)


def test_time_embedding_is_sine_then_cosine_over_geometric_periods():
    t = torch.tensor([0.0, 0.25, 1.0])
    emb = time_embedding(t, 8, min_period=4e-3, max_period=4.0)
    assert emb.shape == (3, 8) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # the last frequency has period 4.0: sin(2π t / 4)
    torch.testing.assert_close(emb[:, 3], torch.sin(2 * math.pi * t / 4.0))
    torch.testing.assert_close(emb[:, 0], torch.sin(2 * math.pi * t / 4e-3))


def test_training_flow_time_lies_in_the_reference_interval_and_favours_noise():
    torch.manual_seed(0)
    t = sample_flow_time(20000, 1.5, 1.0, 0.999, 0.001, torch.device("cpu"))
    assert t.min() >= 0.001 and t.max() <= 1.0
    # Beta(1.5, 1) has mean 0.6
    assert t.mean().item() == pytest.approx(0.6 * 0.999 + 0.001, abs=0.01)

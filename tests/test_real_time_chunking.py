"""Real-time chunking: guided sampling towards the previous chunk, and a clean prefix learnt in training."""

import math

import pytest
import torch

from conftest import flow_state, model_args, noisy_tiny_model, random_inputs
from modeling_pi.flow_matching import integrate
from modeling_pi.real_time_chunking import guidance_weight, guided, prefix_weights

RTC = {"inference_delay": 2, "execution_horizon": 3}  # of a tiny model's 8-step chunks: guided over steps 0..4


def _case(variant: str, **overrides):
    model = noisy_tiny_model(variant, **overrides)
    inputs = random_inputs(model.config)
    prev = torch.randn_like(inputs["noise"])
    return model, inputs, prev


def _sample(model, inputs, **options):
    return model.generate_actions(*model_args(inputs), **flow_state(model.config, inputs), noise=inputs["noise"], **options)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@torch.no_grad()
def test_without_prev_actions_or_with_no_guidance_sampling_is_unchanged_to_the_bit(variant):
    model, inputs, prev = _case(variant)
    plain = _sample(model, inputs)
    assert torch.equal(_sample(model, inputs, prev_actions=None), plain)
    assert torch.equal(_sample(model, inputs, prev_actions=prev, max_guidance_weight=0.0, **RTC), plain)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@pytest.mark.parametrize("schedule", ["exp", "linear", "ones"])
@torch.no_grad()
def test_a_guided_chunk_starts_closer_to_the_previous_one(variant, schedule):
    model, inputs, prev = _case(variant)
    plain = _sample(model, inputs)
    guided_chunk = _sample(model, inputs, prev_actions=prev, prefix_schedule=schedule, **RTC)
    frozen = slice(0, RTC["inference_delay"])
    assert (guided_chunk - prev)[:, frozen].abs().mean() < 0.2 * (plain - prev)[:, frozen].abs().mean()
    assert torch.isfinite(guided_chunk).all()


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@torch.no_grad()
def test_guided_sampling_through_the_cache_is_guidance_through_the_training_pass(variant):
    """The sampler differentiates the cached step against the frozen prefix; the training pass computes the same
    velocity in one joint pass (x_t = actions = noise). Guided Euler over either gives the same chunk."""
    model, inputs, prev = _case(variant)
    batch, horizon = prev.shape[:2]
    weights = prefix_weights(torch.full((batch,), 2), torch.full((batch,), 3), horizon, "exp")

    def joint(x_t, t):
        return model(*model_args(inputs), **flow_state(model.config, inputs), actions=x_t, noise=x_t,
                     timestep=torch.full((batch,), t)).velocity.float()

    expected = integrate(guided(joint, prev, weights, 5.0), inputs["noise"], model.config.num_inference_steps)
    torch.testing.assert_close(_sample(model, inputs, prev_actions=prev, **RTC), expected, atol=1e-5, rtol=1e-5)


def test_the_guidance_gradient_is_the_derivative_of_the_weighted_error():
    """`guided` pulls along the gradient of -1/2 Σ W (prev - (x - t·v(x)))², checked against central differences
    of that error on the tiny model in float64 (whose norms still compute in float32, as Gemma's do: hence a step of
    1e-3 and a tolerance of 1e-3, where a wrong sign, weight or time factor is off by far more)."""
    model, inputs, prev = _case("pi05")
    model = model.double()
    batch, horizon = prev.shape[:2]
    prev = prev.double()
    weights = prefix_weights(torch.full((batch,), 2), torch.full((batch,), 3), horizon, "exp").double()
    state = {name: value.double() for name, value in flow_state(model.config, inputs).items()}
    pixels, cameras, ids, mask = model_args(inputs)
    t = 0.6

    def velocity(x, t=t):
        return model(pixels.double(), cameras, ids, mask, **state, actions=x, noise=x, timestep=torch.full((batch,), t)).velocity

    def error(x):
        return -0.5 * (weights[..., None] * (prev - (x - t * velocity(x))) ** 2).sum()

    x = torch.randn_like(prev)
    guided_velocity = guided(velocity, prev, weights, max_weight=5.0)(x, t)
    with torch.no_grad():
        pull = (velocity(x) - guided_velocity) / guidance_weight(t, 5.0)  # ours: v - w·g
        for seed in range(3):
            direction = torch.randn(prev.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            eps = 1e-3
            numeric = (error(x + eps * direction) - error(x - eps * direction)) / (2 * eps)
            assert (pull * direction).sum().item() == pytest.approx(numeric.item(), rel=1e-3)


@pytest.mark.parametrize("t", [0.9, 0.5, 0.25, 0.01])
def test_the_guidance_weight_is_the_papers_in_its_own_time(t):
    """The paper's τ = 1 - t: min(β, (1-τ)/τ · (τ² + (1-τ)²)/(1-τ)²)."""
    tau = 1 - t
    paper = (1 - tau) / tau * (tau**2 + (1 - tau) ** 2) / (1 - tau) ** 2
    assert guidance_weight(t, 1e9) == pytest.approx(paper)
    assert guidance_weight(t, 2.0) == pytest.approx(min(2.0, paper))
    assert guidance_weight(1.0, 5.0) == 5.0  # the first step, pure noise: the clip


def test_prefix_weights_follow_the_schedule_formulas():
    d, s, horizon = 2, 3, 10  # frozen 0..1, decaying over 2..6, zero from H - s = 7 on
    weights = {name: prefix_weights(torch.tensor([d]), torch.tensor([s]), horizon, name)[0]
               for name in ("exp", "linear", "ones", "zeros")}
    c = [(horizon - s - i) / (horizon - s - d + 1) for i in range(d, horizon - s)]
    assert weights["linear"].tolist() == pytest.approx([1, 1, *c, 0, 0, 0])
    assert weights["exp"].tolist() == pytest.approx([1, 1, *[x * math.expm1(x) / math.expm1(1) for x in c], 0, 0, 0])
    assert weights["ones"].tolist() == [1] * 7 + [0] * 3
    assert weights["zeros"].tolist() == [1, 1] + [0] * 8
    per_row = prefix_weights(torch.tensor([0, 3]), torch.tensor([5, 2]), horizon, "linear")
    assert per_row[0, 5:].eq(0).all() and per_row[1, :3].eq(1).all() and per_row[1, 8:].eq(0).all()


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@torch.no_grad()
def test_a_model_trained_with_a_clean_prefix_keeps_it_exactly(variant):
    model, inputs, prev = _case(variant, rtc_max_delay=3)
    chunk = _sample(model, inputs, prev_actions=prev, inference_delay=torch.tensor([3, 1]), execution_horizon=4)
    assert torch.equal(chunk[0, :3], prev[0, :3]) and torch.equal(chunk[1, :1], prev[1, :1])
    assert not torch.allclose(chunk[1, 1:3], prev[1, 1:3])  # the rest is sampled
    with pytest.raises(ValueError, match="at most 3"):
        _sample(model, inputs, prev_actions=prev, inference_delay=4, execution_horizon=4)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_per_step_flow_time_equal_everywhere_is_the_chunks_flow_time(variant):
    model, inputs, _ = _case(variant)
    one = torch.tensor([0.3, 0.8])
    options = {**flow_state(model.config, inputs), "actions": inputs["actions"], "noise": inputs["noise"]}
    per_chunk = model(*model_args(inputs), **options, timestep=one)
    per_step = model(*model_args(inputs), **options, timestep=one[:, None].expand(-1, model.config.action_horizon))
    torch.testing.assert_close(per_step.velocity, per_chunk.velocity, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_clean_prefix_training_gives_its_steps_flow_time_0_and_no_loss(variant):
    model, inputs, _ = _case(variant)
    horizon = model.config.action_horizon
    timestep = torch.tensor([0.5, 0.7])[:, None].repeat(1, horizon)
    timestep[0, :3] = 0  # a clean prefix of 3 steps in the first row
    out = model(*model_args(inputs), **flow_state(model.config, inputs), actions=inputs["actions"], noise=inputs["noise"],
                timestep=timestep)
    scored = timestep > 0
    torch.testing.assert_close(out.loss, (out.losses * scored).sum() / scored.sum())
    out.loss.backward()  # the clean steps' predictions get no gradient from the loss
    # with the config's max delay and no timestep, the model draws one delay per example itself
    torch.manual_seed(0)
    model.config.rtc_max_delay = 3
    drawn = model(*model_args(inputs), **flow_state(model.config, inputs), actions=inputs["actions"], noise=inputs["noise"])
    assert torch.isfinite(drawn.loss)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_a_clean_prefix_holds_the_prefix_actions_and_the_rest_the_actions(variant):
    model, inputs, executed = _case(variant)
    horizon = model.config.action_horizon
    timestep = torch.tensor([0.5, 0.7])[:, None].repeat(1, horizon)
    timestep[0, :3] = 0
    options = {**flow_state(model.config, inputs), "noise": inputs["noise"], "timestep": timestep}
    given = model(*model_args(inputs), **options, actions=inputs["actions"], prefix_actions=executed)
    spliced = inputs["actions"].clone()
    spliced[0, :3] = executed[0, :3]  # only the steps at flow time 0 take the prefix actions
    expected = model(*model_args(inputs), **options, actions=spliced)
    torch.testing.assert_close(given.velocity, expected.velocity, rtol=0, atol=0)
    torch.testing.assert_close(given.loss, expected.loss, rtol=0, atol=0)
    assert not torch.equal(given.velocity, model(*model_args(inputs), **options, actions=inputs["actions"]).velocity)
    with pytest.raises(ValueError, match="per-step timestep"):  # one flow time per chunk has no clean prefix
        model(*model_args(inputs), **{**options, "timestep": timestep[:, -1]}, actions=inputs["actions"],
              prefix_actions=executed)
    with pytest.raises(ValueError, match="prefix_actions"):
        model(*model_args(inputs), **options, actions=inputs["actions"], prefix_actions=executed[:, :3])


def test_clean_prefix_delays_cover_zero_to_the_maximum():
    from modeling_pi.modeling_pi import with_clean_prefix

    torch.manual_seed(0)
    timestep = with_clean_prefix(torch.full((2000,), 0.5), max_delay=3, horizon=8)
    delays = (timestep == 0).sum(dim=1)
    assert set(delays.tolist()) == {0, 1, 2, 3}
    assert (timestep[:, :3] == 0).sum(dim=1).eq(delays).all()  # the clean steps are the leading ones
    assert delays.float().mean().item() == pytest.approx(1.5, abs=0.1)


@pytest.mark.parametrize("options, message", [
    ({"inference_delay": 2}, "execution_horizon"),
    ({"inference_delay": 5, "execution_horizon": 4}, "action_horizon"),
    ({"inference_delay": 1, "execution_horizon": 3, "prefix_schedule": "cosine"}, "prefix_schedule"),
    ({"inference_delay": 1, "execution_horizon": 3, "max_guidance_weight": -1.0}, "max_guidance_weight"),
    ({"inference_delay": 1, "execution_horizon": 3, "max_guidance_weight": float("nan")}, "max_guidance_weight"),
    ({"inference_delay": 1, "execution_horizon": 3, "max_guidance_weight": float("inf")}, "max_guidance_weight"),
    ({"inference_delay": 1.5, "execution_horizon": 3}, "count control steps: ints"),
    ({"inference_delay": torch.tensor([1, 2, 3]), "execution_horizon": 3}, "one per row"),
])
@torch.no_grad()
def test_bad_real_time_options_are_refused(options, message):
    model, inputs, prev = _case("pi0")
    with pytest.raises(ValueError, match=message):
        _sample(model, inputs, prev_actions=prev, **options)
    with pytest.raises(ValueError, match="prev_actions"):
        _sample(model, inputs, prev_actions=prev[:, :3], inference_delay=1, execution_horizon=3)


def test_guidance_under_inference_mode_says_why_it_cannot_run():
    model, inputs, prev = _case("pi05")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        _sample(model, inputs, prev_actions=prev, **RTC)

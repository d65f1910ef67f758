"""π0 and π0.5 converted from the reference's orbax checkpoints reproduce the reference's outputs.

The project's tolerances: 1e-4 max abs error on image tokens, prefix output, velocity and loss;
5e-4 on sampled actions; under both the eager and the sdpa attention backends.
"""

import pytest
import torch
from transformers import AutoModel

import modeling_pi  # noqa: F401  (registers "pi" with the Auto classes)
from conftest import flow_state, load_fixture_io, model_args


@pytest.fixture(scope="module", params=[(v, impl) for v in ("pi0", "pi05") for impl in ("eager", "sdpa")], ids=str)
def case(request, converted):
    variant, impl = request.param
    model = AutoModel.from_pretrained(converted(variant), attn_implementation=impl).eval()
    assert type(model).__name__ == "PiForActionGeneration" and model.config._attn_implementation == impl
    return model, load_fixture_io(variant)


@torch.no_grad()
def test_image_tokens(case):
    model, io = case
    tokens = model.get_image_features(io["pixel_values"][:, 0])
    torch.testing.assert_close(tokens, io["expected.image_tokens_base_0_rgb"], atol=1e-4, rtol=0)


@torch.no_grad()
def test_prefix_output(case):
    model, io = case
    prefix_out, valid = model.encode_prefix(*model_args(io))
    expected = io["expected.prefix_out"]
    assert prefix_out.shape == expected.shape
    # Rows at masked positions (absent camera, padding) carry no meaning in the reference.
    error = ((prefix_out - expected).abs() * valid[..., None]).max()
    assert error <= 1e-4, error
    assert not valid.all(), "the fixture masks a camera and pads prompts: the comparison must cover masking"


@torch.no_grad()
def test_velocity_and_loss(case):
    model, io = case
    out = model(*model_args(io), actions=io["actions"], **flow_state(model.config, io), noise=io["noise"], timestep=io["time"])
    torch.testing.assert_close(out.velocity, io["expected.v_t"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.losses, io["expected.loss"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.loss, io["expected.loss"].mean(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("steps", [10, 3])
@torch.no_grad()
def test_euler_sampling(case, steps):
    model, io = case
    actions = model.generate_actions(*model_args(io), **flow_state(model.config, io), noise=io["noise"], num_steps=steps)
    torch.testing.assert_close(actions, io[f"expected.sample_actions_{steps}_steps"], atol=5e-4, rtol=0)

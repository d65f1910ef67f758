"""The reference's outputs reproduced on an accelerator, in float32 and in bfloat16 (skipped without one).

float32 is held to the CPU's tolerances (test_parity, test_fast_model), with TF32 off. bfloat16 — the
released models' dtype — is held to 1% of the largest reference action for sampled chunks, 2% of the
reference loss for π0-FAST, and the same first greedy token (the tiny random model's later logits lie too
close together for bfloat16 to keep every choice).
"""

import os

import pytest
import torch
from transformers import AutoModel

import modeling_pi  # noqa: F401
from conftest import MODEL_INPUTS, load_fixture_io

# PI_TEST_DEVICES=cpu runs these checks here too (to check the checks)
ACCELERATORS = os.environ.get("PI_TEST_DEVICES", "cuda" if torch.cuda.is_available() else "").split(",")
ACCELERATORS = [device for device in ACCELERATORS if device]
pytestmark = pytest.mark.skipif(not ACCELERATORS, reason="no accelerator on this machine")


@pytest.fixture(autouse=True)
def no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _on(io, device, names):
    return [io[name].to(device) for name in names]


@pytest.mark.parametrize("device", ACCELERATORS)
@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@torch.no_grad()
def test_flow_sampling_and_velocity_match_the_reference(converted, variant, device):
    io = load_fixture_io(variant)
    inputs = _on(io, device, MODEL_INPUTS)
    state, noise = io["state"].to(device), io["noise"].to(device)
    expected = io["expected.sample_actions_10_steps"]

    model = AutoModel.from_pretrained(converted(variant)).to(device).eval()
    out = model(*inputs, actions=io["actions"].to(device), state=state, noise=noise, timestep=io["time"].to(device))
    torch.testing.assert_close(out.velocity.cpu(), io["expected.v_t"], atol=1e-4, rtol=0)
    actions = model.generate_actions(*inputs, state=state, noise=noise).cpu()
    torch.testing.assert_close(actions, expected, atol=5e-4, rtol=0)

    model = AutoModel.from_pretrained(converted(variant), dtype=torch.bfloat16).to(device).eval()
    actions = model.generate_actions(*inputs, state=state, noise=noise).cpu()
    assert actions.dtype == torch.float32
    assert (actions - expected).abs().max() < 0.01 * expected.abs().max()


@pytest.mark.parametrize("device", ACCELERATORS)
@torch.no_grad()
def test_fast_loss_and_greedy_tokens_match_the_reference(converted, device):
    io = load_fixture_io("pi0_fast")
    inputs = _on(io, device, MODEL_INPUTS)
    labels = io["input_ids"].masked_fill(~io["token_loss_mask"], -100).to(device)
    prompt = _on(io, device, ("pixel_values", "pixel_attention_mask", "decode_prompt", "decode_prompt_mask"))
    prompt[2] = prompt[2].long()
    expected_tokens = io["expected.greedy_tokens_16"].long()

    for dtype, loss_tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 0.02 * io["expected.loss"].abs().max().item())):
        model = AutoModel.from_pretrained(converted("pi0_fast"), dtype=dtype).to(device).eval()
        out = model(*inputs, token_type_ids=io["token_ar_mask"].long().to(device), labels=labels)
        torch.testing.assert_close(out.losses.float().cpu(), io["expected.loss"], atol=loss_tolerance, rtol=0)
        tokens = model.generate_actions(*prompt, max_new_tokens=16).cpu()
        if dtype == torch.float32:
            assert torch.equal(tokens, expected_tokens)
        else:
            assert torch.equal(tokens[:, 0], expected_tokens[:, 0])  # later ones may flip where random logits are close


@pytest.mark.parametrize("device", ACCELERATORS)
@torch.no_grad()
def test_compiled_generation_with_cuda_graphs_matches_the_reference(converted, device):
    """`compile_generation(mode="reduce-overhead")`: on CUDA the prefix pass and each step replay as CUDA
    graphs. Two calls each, so the second replays graphs whose cache was reset in place (float32)."""
    io = load_fixture_io("pi0")
    inputs, state, noise = _on(io, device, MODEL_INPUTS), io["state"].to(device), io["noise"].to(device)
    model = AutoModel.from_pretrained(converted("pi0")).to(device).eval()
    model.compile_generation(mode="reduce-overhead")
    for _ in range(2):
        actions = model.generate_actions(*inputs, state=state, noise=noise).cpu()
        torch.testing.assert_close(actions, io["expected.sample_actions_10_steps"], atol=5e-4, rtol=0)

    io = load_fixture_io("pi0_fast")
    prompt = _on(io, device, ("pixel_values", "pixel_attention_mask", "decode_prompt", "decode_prompt_mask"))
    prompt[2] = prompt[2].long()
    model = AutoModel.from_pretrained(converted("pi0_fast")).to(device).eval()
    model.compile_generation(mode="reduce-overhead")
    for _ in range(2):
        assert torch.equal(model.generate_actions(*prompt, max_new_tokens=16).cpu(), io["expected.greedy_tokens_16"].long())

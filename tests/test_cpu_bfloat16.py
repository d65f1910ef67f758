"""bfloat16 generation on CPUs without bfloat16 arithmetic: large linears computed as float32 products.

Whether this CPU has bfloat16 arithmetic or not, the tests choose the kernel themselves (`kernels`), and
make every product of the fixture-sized models large enough to be upcast.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel

from conftest import load_fixture_io, model_args, noisy_tiny_model, random_inputs
from modeling_pi import cpu_bfloat16
from modeling_pi.cpu_bfloat16 import linear_in_float32


@pytest.fixture
def kernels(monkeypatch):
    """kernels(upcast) -> the row counts of the products computed in float32 from then on (none if not `upcast`).
    With `counted=False` nothing is counted (compiled code would guard on the list's length)."""
    upcast_rows = []
    whole = cpu_bfloat16.linear_in_float32

    def count(x, weight, bias=None):
        upcast_rows.append(x.numel() // x.shape[-1])
        return whole(x, weight, bias)

    def choose(upcast: bool, counted: bool = True) -> list[int]:
        monkeypatch.setattr(cpu_bfloat16, "lacks_bfloat16_arithmetic", lambda: upcast)
        monkeypatch.setattr(cpu_bfloat16, "MIN_WEIGHT", 0)
        monkeypatch.setattr(cpu_bfloat16, "linear_in_float32", count if counted else whole)
        upcast_rows.clear()
        return upcast_rows

    return choose


def test_the_sliced_float32_product_is_the_bfloat16_linear(monkeypatch):
    """Slice by slice (5 output features each, the last one short), the product is the float32 product of the
    bfloat16 operands rounded once to bfloat16: what the native kernel computes, up to the order of its sums."""
    monkeypatch.setattr(cpu_bfloat16, "UPCAST_SLICE", 5 * 48)
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 9, 48).bfloat16(), torch.randn(37, 48).bfloat16(), torch.randn(37).bfloat16()
    out = linear_in_float32(x, weight, bias)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 9, 37)
    exact = F.linear(x.float(), weight.float(), bias.float())
    torch.testing.assert_close(out.float(), exact, rtol=2**-8, atol=1e-5)  # half a bfloat16 ulp
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=2**-7, atol=1e-2)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@pytest.mark.parametrize("upcast", [False, True], ids=["native", "float32-products"])
@torch.no_grad()
def test_bfloat16_actions_stay_close_to_the_float32_reference(converted, kernels, variant, upcast):
    """Released models run in bfloat16; with either kernel the chunk stays within 1% of the reference's float32 one."""
    model = AutoModel.from_pretrained(converted(variant), dtype=torch.bfloat16).eval()
    io = load_fixture_io(variant)
    upcast_rows = kernels(upcast)
    actions = model.generate_actions(*model_args(io), state=io["state"], noise=io["noise"])
    assert actions.dtype == torch.float32
    expected = io["expected.sample_actions_10_steps"]
    # measured: native 0.39% (π0), 0.15% (π0.5); every product upcast 0.47%, 0.14%
    assert (actions - expected).abs().max() < 0.01 * expected.abs().max()
    assert bool(upcast_rows) == upcast


@torch.no_grad()
def test_fast_prefill_computes_in_float32_and_its_decoding_steps_stay_native(converted, kernels):
    """π0-FAST in bfloat16: the same greedy tokens either way; the one-row decoding steps keep the native kernel."""
    model = AutoModel.from_pretrained(converted("pi0_fast"), dtype=torch.bfloat16).eval()
    io = load_fixture_io("pi0_fast")
    prompt = io["pixel_values"], io["pixel_attention_mask"], io["decode_prompt"].long(), io["decode_prompt_mask"]
    kernels(False)
    native = model.generate_actions(*prompt, max_new_tokens=16)
    upcast_rows = kernels(True)
    assert torch.equal(model.generate_actions(*prompt, max_new_tokens=16), native)
    assert upcast_rows and min(upcast_rows) >= cpu_bfloat16.MIN_ROWS > prompt[0].shape[0]


@torch.no_grad()
def test_linears_are_plain_again_after_a_call_even_a_failed_one(kernels):
    model = noisy_tiny_model().to(torch.bfloat16)
    inputs = random_inputs(model.config)
    kernels(True)
    seen = []
    model.action_expert.layers[0].mlp.up_proj.register_forward_hook(lambda module, *_: seen.append(type(module)))
    model.generate_actions(*model_args(inputs), state=inputs["state"], noise=inputs["noise"], num_steps=2)
    assert seen == [cpu_bfloat16._Float32Linear] * 2
    with pytest.raises(ValueError, match="state"):
        model.generate_actions(*model_args(inputs), noise=inputs["noise"])
    assert {type(m) for m in model.modules() if isinstance(m, nn.Linear)} == {nn.Linear}


@torch.no_grad()
def test_lora_adapters_still_apply_under_float32_products(kernels):
    from peft import LoraConfig, get_peft_model

    model = noisy_tiny_model().to(torch.bfloat16)
    inputs = random_inputs(model.config)
    adapters = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    lora = get_peft_model(model, adapters)
    generate = lora.base_model.model.generate_actions
    run = lambda: generate(*model_args(inputs), state=inputs["state"], noise=inputs["noise"])  # noqa: E731
    kernels(False)
    native = run()
    with lora.disable_adapter():
        without_adapters = run()
    upcast_rows = kernels(True)
    upcast = run()
    assert upcast_rows
    torch.testing.assert_close(upcast, native, atol=0.02, rtol=0)
    assert (upcast - without_adapters).abs().max() > 10 * (upcast - native).abs().max()


@torch.no_grad()
def test_compiled_generation_computes_in_float32_without_recompiling(kernels):
    """The linears' class is swapped for each call: compiled code guards on it, and must not recompile."""
    model = noisy_tiny_model("pi05").to(torch.bfloat16)
    inputs = random_inputs(model.config)
    kernels(True, counted=False)
    eager = model.generate_actions(*model_args(inputs), noise=inputs["noise"], num_steps=3)
    model.compile_generation()
    compiled = [model.generate_actions(*model_args(inputs), noise=inputs["noise"], num_steps=3) for _ in range(3)]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    model.generate_actions(*model_args(inputs), noise=inputs["noise"], num_steps=3)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    for actions in compiled:
        torch.testing.assert_close(actions, eager, atol=0.02, rtol=0)

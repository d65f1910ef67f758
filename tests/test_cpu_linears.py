"""Linears during CPU inference: float32 products through oneDNN, bfloat16 ones computed in float32.

Whatever this CPU has, the tests choose the kernels themselves (`kernels`), and make every product of the
fixture-sized models large enough to take the chosen one.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel

from conftest import flow_state, load_fixture_io, model_args, noisy_tiny_model, random_inputs
from modeling_pi import cpu_linears
from modeling_pi.cpu_linears import CpuLinear, float32_product, linear_in_float32

pytestmark = pytest.mark.skipif(not cpu_linears.has_onednn(), reason="this PyTorch build has no oneDNN linear")


@pytest.fixture
def kernels(monkeypatch):
    """kernels(upcast, onednn=True) -> the row counts of the products computed from then on by the chosen
    kernel: bfloat16 ones upcast to float32 (if `upcast`), float32 ones by oneDNN (if `onednn`). With
    `counted=False` nothing is counted (compiled code would guard on the list's length)."""
    rows = []
    upcast_whole, onednn_whole = cpu_linears.linear_in_float32, cpu_linears.onednn_linear

    def counting(kernel):
        def count(x, weight, bias=None):
            rows.append(x.numel() // x.shape[-1])
            return kernel(x, weight, bias)

        return count

    def choose(upcast: bool, onednn: bool = True, counted: bool = True) -> list[int]:
        monkeypatch.setattr(cpu_linears, "lacks_bfloat16_arithmetic", lambda: upcast)
        monkeypatch.setattr(cpu_linears, "MIN_WEIGHT", 0)
        monkeypatch.setattr(cpu_linears, "ONEDNN_MIN_WEIGHT", 0 if onednn else float("inf"))
        monkeypatch.setattr(cpu_linears, "linear_in_float32", counting(upcast_whole) if counted else upcast_whole)
        monkeypatch.setattr(cpu_linears, "onednn_linear", counting(onednn_whole) if counted else onednn_whole)
        rows.clear()
        return rows

    return choose


@torch.no_grad()
def test_the_onednn_product_is_the_float32_linear(kernels):
    """With and without bias, over a strided input; a strided weight (a slice of a wider one) and a product
    that needs gradients keep `F.linear` itself."""
    onednn_rows = kernels(False)
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 30, 48), torch.randn(37, 48), torch.randn(37)
    for args in [(x, weight), (x, weight, bias), (x[:, 3:20], weight, bias), (x[0, 0], weight)]:
        torch.testing.assert_close(float32_product(*args), F.linear(*args), atol=1e-5, rtol=1e-5)
    assert onednn_rows == [60, 60, 34, 1]

    wider = torch.randn(37, 96)
    assert torch.equal(float32_product(x, wider[:, :48]), F.linear(x, wider[:, :48]))
    with torch.enable_grad():
        assert float32_product(x, weight.requires_grad_()).grad_fn is not None
    assert onednn_rows == [60, 60, 34, 1]


def test_the_sliced_float32_product_is_the_bfloat16_linear(monkeypatch):
    """Slice by slice (5 output features each, the last one short), the product is the float32 product of the
    bfloat16 operands rounded once to bfloat16: what the native kernel computes, up to the order of its sums."""
    monkeypatch.setattr(cpu_linears, "UPCAST_SLICE", 5 * 48)
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 9, 48).bfloat16(), torch.randn(37, 48).bfloat16(), torch.randn(37).bfloat16()
    out = linear_in_float32(x, weight, bias)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 9, 37)
    exact = F.linear(x.float(), weight.float(), bias.float())
    torch.testing.assert_close(out.float(), exact, rtol=2**-8, atol=1e-5)  # half a bfloat16 ulp
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=2**-7, atol=1e-2)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@torch.no_grad()
def test_float32_actions_through_onednn_are_the_reference_ones(converted, kernels, variant):
    model = AutoModel.from_pretrained(converted(variant)).eval()
    io = load_fixture_io(variant)
    onednn_rows = kernels(False)
    actions = model.generate_actions(*model_args(io), **flow_state(model.config, io), noise=io["noise"])
    torch.testing.assert_close(actions, io["expected.sample_actions_10_steps"], atol=5e-4, rtol=0)
    assert onednn_rows


@torch.no_grad()
def test_fast_tokens_through_onednn_are_the_reference_ones_decoding_steps_included(converted, kernels):
    model = AutoModel.from_pretrained(converted("pi0_fast")).eval()
    io = load_fixture_io("pi0_fast")
    prompt = io["pixel_values"], io["pixel_attention_mask"], io["decode_prompt"].long(), io["decode_prompt_mask"]
    onednn_rows = kernels(False)
    tokens = model.generate_actions(*prompt, max_new_tokens=16)
    assert torch.equal(tokens, io["expected.greedy_tokens_16"].long())
    assert min(onednn_rows) == prompt[0].shape[0]  # one row per example: a decoding step


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@pytest.mark.parametrize("upcast", [False, True], ids=["native", "float32-products"])
@torch.no_grad()
def test_bfloat16_actions_stay_close_to_the_float32_reference(converted, kernels, variant, upcast):
    """Released models run in bfloat16; with either kernel the chunk stays within 1% of the reference's float32 one."""
    model = AutoModel.from_pretrained(converted(variant), dtype=torch.bfloat16).eval()
    io = load_fixture_io(variant)
    upcast_rows = kernels(upcast, onednn=False)
    actions = model.generate_actions(*model_args(io), **flow_state(model.config, io), noise=io["noise"])
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
    kernels(False, onednn=False)
    native = model.generate_actions(*prompt, max_new_tokens=16)
    upcast_rows = kernels(True, onednn=False)
    assert torch.equal(model.generate_actions(*prompt, max_new_tokens=16), native)
    assert upcast_rows and min(upcast_rows) >= cpu_linears.MIN_ROWS > prompt[0].shape[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_linears_are_plain_again_after_a_call_even_a_failed_one(kernels, dtype):
    model = noisy_tiny_model().to(dtype)
    inputs = random_inputs(model.config)
    kernels(True)
    seen = []
    model.action_expert.layers[0].mlp.up_proj.register_forward_hook(lambda module, *_: seen.append(type(module)))
    model.generate_actions(*model_args(inputs), state=inputs["state"], noise=inputs["noise"], num_steps=2)
    assert seen == [CpuLinear] * 2
    with pytest.raises(ValueError, match="state"):
        model.generate_actions(*model_args(inputs), noise=inputs["noise"])
    assert {type(m) for m in model.modules() if isinstance(m, nn.Linear)} == {nn.Linear}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_lora_adapters_still_apply_under_cpu_products(kernels, dtype):
    from peft import LoraConfig, get_peft_model

    model = noisy_tiny_model().to(dtype)
    inputs = random_inputs(model.config)
    adapters = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    lora = get_peft_model(model, adapters)
    generate = lora.base_model.model.generate_actions
    run = lambda: generate(*model_args(inputs), state=inputs["state"], noise=inputs["noise"])  # noqa: E731
    kernels(False, onednn=False)
    native = run()
    with lora.disable_adapter():
        without_adapters = run()
    chosen_rows = kernels(True)
    chosen = run()
    assert chosen_rows
    torch.testing.assert_close(chosen, native, atol=0.02 if dtype == torch.bfloat16 else 1e-5, rtol=0)
    assert (chosen - without_adapters).abs().max() > 10 * (chosen - native).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_compiled_generation_takes_the_chosen_products_without_recompiling(kernels, dtype):
    """The linears' class is swapped for each call: compiled code guards on it, and must not recompile. Its
    float32 products (bfloat16 ones upcast included) go to oneDNN as the eager ones do."""
    model = noisy_tiny_model("pi05").to(dtype)
    inputs = random_inputs(model.config)
    kernels(True, counted=False)
    eager = model.generate_actions(*model_args(inputs), noise=inputs["noise"], num_steps=3)
    model.compile_generation()
    compiled = [model.generate_actions(*model_args(inputs), noise=inputs["noise"], num_steps=3) for _ in range(3)]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    model.generate_actions(*model_args(inputs), noise=inputs["noise"], num_steps=3)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    for actions in compiled:
        torch.testing.assert_close(actions, eager, atol=0.02 if dtype == torch.bfloat16 else 1e-4, rtol=0)
    with torch.profiler.profile() as profile:
        model.generate_actions(*model_args(inputs), noise=inputs["noise"], num_steps=3)
    assert "mkldnn::_linear_pointwise" in {event.key for event in profile.key_averages()}

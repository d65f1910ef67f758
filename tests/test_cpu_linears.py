"""`optimize_for_cpu`: bfloat16 linears computed as float32 products on CPUs without bfloat16 arithmetic, and
float32 products over few rows of large weights computed transposed.

Whatever this CPU has, the tests decide whether it "lacks" bfloat16 arithmetic themselves (`kernels`), and
make the fixture-sized models' products large enough, or few-rowed enough, to take the chosen kernel
(`kernels`, `transposed`).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel

from conftest import flow_state, load_fixture_io, model_args, noisy_tiny_model, random_inputs
from modeling_pi import cpu_linears
from modeling_pi.cpu_linears import CpuLinear, linear_in_float32, transposed_product


@pytest.fixture
def kernels(monkeypatch):
    """kernels(lacks) -> the row counts of the products computed from then on in float32, on a CPU that lacks
    bfloat16 arithmetic (if `lacks`). With `counted=False` nothing is counted (compiled code would guard on the
    list's length)."""
    rows = []
    upcast_whole = cpu_linears.linear_in_float32

    def count(x, weight, bias=None, transpose=False):
        rows.append(x.numel() // x.shape[-1])
        return upcast_whole(x, weight, bias, transpose)

    def choose(lacks: bool, counted: bool = True) -> list[int]:
        monkeypatch.setattr(cpu_linears, "lacks_bfloat16_arithmetic", lambda: lacks)
        monkeypatch.setattr(cpu_linears, "MIN_WEIGHT", 0)
        monkeypatch.setattr(cpu_linears, "linear_in_float32", count if counted else upcast_whole)
        rows.clear()
        return rows

    return choose


@pytest.fixture
def transposed(monkeypatch):
    """transposed(max_rows, min_weight) -> the (rows, weight elements) of the products computed from then on as
    transposed products, with those thresholds."""
    products = []
    transpose = cpu_linears.transposed_product

    def count(x, weight, bias=None):
        products.append((x.numel() // x.shape[-1], weight.numel()))
        return transpose(x, weight, bias)

    def choose(max_rows: int = cpu_linears.MAX_TRANSPOSED_ROWS, min_weight: int = 0) -> list[tuple[int, int]]:
        monkeypatch.setattr(cpu_linears, "MAX_TRANSPOSED_ROWS", max_rows)
        monkeypatch.setattr(cpu_linears, "MIN_TRANSPOSED_WEIGHT", min_weight)
        monkeypatch.setattr(cpu_linears, "transposed_product", count)
        products.clear()
        return products

    return choose


@pytest.mark.parametrize("bias", [False, True])
def test_the_transposed_product_is_the_linear(bias):
    torch.manual_seed(0)
    x, weight = torch.randn(2, 9, 48), torch.randn(37, 48)
    b = torch.randn(37) if bias else None
    out = transposed_product(x, weight, b)
    assert out.shape == (2, 9, 37) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@torch.no_grad()
def test_float32_actions_match_the_reference_with_every_product_transposed(converted, transposed, variant):
    model = AutoModel.from_pretrained(converted(variant)).eval()
    io = load_fixture_io(variant)
    products = transposed(max_rows=10**6)
    assert model.optimize_for_cpu()
    actions = model.generate_actions(*model_args(io), **flow_state(model.config, io), noise=io["noise"])
    assert max(rows for rows, _ in products) >= model.config.num_image_tokens  # the prefix's products too
    torch.testing.assert_close(actions, io["expected.sample_actions_10_steps"], atol=5e-4, rtol=0)


@torch.no_grad()
def test_only_products_over_few_rows_of_large_weights_are_transposed(transposed):
    """A flow step's suffix (one row per action step) takes the transposed product; the prefix, longer, and
    weights under the threshold keep PyTorch's."""
    model = noisy_tiny_model("pi05")
    inputs = random_inputs(model.config)
    suffix_rows = len(inputs["input_ids"]) * model.config.action_horizon
    up = model.action_expert.layers[0].mlp.up_proj.weight.numel()
    products = transposed(max_rows=suffix_rows, min_weight=up)
    model.optimize_for_cpu(transposed_products=False)
    model.generate_actions(*model_args(inputs), noise=inputs["noise"])
    assert not products
    model.optimize_for_cpu()
    model.generate_actions(*model_args(inputs), noise=inputs["noise"])
    assert (suffix_rows, up) in products
    assert all(cpu_linears.MIN_ROWS <= rows <= suffix_rows and elements >= up for rows, elements in products)


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
@pytest.mark.parametrize("optimized", [False, True], ids=["native", "optimize_for_cpu"])
@torch.no_grad()
def test_bfloat16_actions_stay_close_to_the_float32_reference(converted, kernels, variant, optimized):
    """Released models run in bfloat16; with either kernel the chunk stays within 1% of the reference's float32 one."""
    model = AutoModel.from_pretrained(converted(variant), dtype=torch.bfloat16).eval()
    io = load_fixture_io(variant)
    upcast_rows = kernels(True)
    if optimized:
        assert model.optimize_for_cpu()
    actions = model.generate_actions(*model_args(io), **flow_state(model.config, io), noise=io["noise"])
    assert actions.dtype == torch.float32
    expected = io["expected.sample_actions_10_steps"]
    # measured: native 0.39% (π0), 0.15% (π0.5); every product upcast 0.47%, 0.14%
    assert (actions - expected).abs().max() < 0.01 * expected.abs().max()
    assert bool(upcast_rows) == optimized


@torch.no_grad()
def test_fast_prefill_computes_in_float32_and_its_decoding_steps_stay_native(converted, kernels):
    """π0-FAST in bfloat16: the same greedy tokens either way; the one-row decoding steps keep the native kernel."""
    model = AutoModel.from_pretrained(converted("pi0_fast"), dtype=torch.bfloat16).eval()
    io = load_fixture_io("pi0_fast")
    prompt = io["pixel_values"], io["pixel_attention_mask"], io["decode_prompt"].long(), io["decode_prompt_mask"]
    upcast_rows = kernels(True)
    native = model.generate_actions(*prompt, max_new_tokens=16)
    assert not upcast_rows  # nothing changes unless asked
    model.optimize_for_cpu()
    assert torch.equal(model.generate_actions(*prompt, max_new_tokens=16), native)
    assert upcast_rows and min(upcast_rows) >= cpu_linears.MIN_ROWS > prompt[0].shape[0]


def test_the_switch_takes_only_the_kernels_asked_for_and_can_be_undone(kernels):
    model = noisy_tiny_model().to(torch.bfloat16)
    kernels(False)  # bfloat16 arithmetic native: nothing to upcast
    assert model.optimize_for_cpu(transposed_products=False) == []
    assert {type(m) for m in model.modules() if isinstance(m, nn.Linear)} == {nn.Linear}
    kernels(True)
    changed = model.optimize_for_cpu()
    assert "action_expert.layers.0.mlp.up_proj" in changed and "vision_tower.encoder.layers.0.mlp.fc1" in changed
    linear = model.get_submodule("action_expert.layers.0.mlp.up_proj")
    assert linear.upcast_bfloat16 and linear.transpose_few_rows
    assert model.optimize_for_cpu(transposed_products=False) == changed and not linear.transpose_few_rows
    assert model.optimize_for_cpu(False) == []
    assert {type(m) for m in model.modules() if isinstance(m, nn.Linear)} == {nn.Linear}
    assert not hasattr(linear, "upcast_bfloat16") and not hasattr(linear, "transpose_few_rows")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_keeps_the_native_kernel(kernels, transposed, dtype):
    """With gradients, an optimised linear is PyTorch's linear: the same loss and gradients to the bit."""
    model = noisy_tiny_model().to(dtype)
    inputs = random_inputs(model.config)
    upcast_rows, transposed_rows = kernels(True), transposed(max_rows=10**6)

    def gradients():
        model.zero_grad()
        loss = model(*model_args(inputs), state=inputs["state"], actions=inputs["actions"], noise=inputs["noise"],
                     timestep=torch.tensor([0.3, 0.8])).loss
        loss.backward()
        return [loss] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    native = gradients()
    model.optimize_for_cpu()
    assert all(torch.equal(a, b) for a, b in zip(gradients(), native)) and not upcast_rows and not transposed_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_lora_adapters_still_apply_to_optimised_linears(kernels, transposed, dtype):
    from peft import LoraConfig, get_peft_model

    model = noisy_tiny_model().to(dtype)
    inputs = random_inputs(model.config)
    adapters = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    lora = get_peft_model(model, adapters)
    generate = lora.base_model.model.generate_actions
    run = lambda: generate(*model_args(inputs), state=inputs["state"], noise=inputs["noise"])  # noqa: E731
    upcast_rows, transposed_products = kernels(True), transposed()
    native = run()
    with lora.disable_adapter():
        without_adapters = run()
    model.optimize_for_cpu()
    optimised = run()
    assert bool(upcast_rows) == (dtype == torch.bfloat16) and bool(transposed_products)
    torch.testing.assert_close(optimised, native, atol=0.02 if dtype == torch.bfloat16 else 1e-5, rtol=0)
    assert (optimised - without_adapters).abs().max() > 10 * (optimised - native).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_compiled_generation_takes_the_chosen_products_without_recompiling(kernels, monkeypatch, dtype):
    model = noisy_tiny_model("pi05").to(dtype)
    inputs = random_inputs(model.config)
    kernels(True, counted=False)
    monkeypatch.setattr(cpu_linears, "MIN_TRANSPOSED_WEIGHT", 0)
    model.optimize_for_cpu()
    eager = model.generate_actions(*model_args(inputs), noise=inputs["noise"], num_steps=3)
    model.compile_generation()
    compiled = [model.generate_actions(*model_args(inputs), noise=inputs["noise"], num_steps=3) for _ in range(3)]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    model.generate_actions(*model_args(inputs), noise=inputs["noise"], num_steps=3)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    for actions in compiled:
        torch.testing.assert_close(actions, eager, atol=0.02 if dtype == torch.bfloat16 else 1e-5, rtol=0)
    assert any(isinstance(m, CpuLinear) for m in model.modules())


def test_the_transposed_products_benchmark_times_both_ways_and_marks_where_the_rule_takes_one(monkeypatch):
    from benchmarks.transposed_products import bench

    monkeypatch.setattr(cpu_linears, "MAX_TRANSPOSED_ROWS", 16)
    monkeypatch.setattr(cpu_linears, "MIN_TRANSPOSED_WEIGHT", 64 * 128)
    rows = bench(1, (1, 8, 32), {"large": (64, 128), "small": (64, 64)})
    assert [(row["weight"], row["rows"], row["taken"]) for row in rows] == [
        ("large", 1, False), ("large", 8, True), ("large", 32, False),
        ("small", 1, False), ("small", 8, False), ("small", 32, False)]
    assert all(row["linear_ms"] > 0 and row["transposed_ms"] > 0 and row["ratio"] > 0 for row in rows)

"""Weight-only quantization (torchao): which weights, how close the chunk stays, and what is refused."""

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModel, TorchAoConfig

import modeling_pi  # noqa: F401
from conftest import flow_state, load_fixture_io, model_args, noisy_tiny_model, random_inputs
from modeling_pi.quantization import STACKS, is_quantized

torchao = pytest.importorskip("torchao")


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@torch.no_grad()
def test_int8_weights_keep_the_reference_chunk_within_one_percent(converted, variant):
    model = AutoModel.from_pretrained(converted(variant)).eval()
    io = load_fixture_io(variant)
    names = model.quantize_weights("int8")
    assert names and all(name.split(".")[0] in STACKS for name in names)
    for name, module in model.named_modules():  # the three stacks' linears, and nothing else
        if isinstance(module, nn.Linear):
            assert is_quantized(module.weight) == (name in names), name
    assert not is_quantized(model.action_in_proj.weight)  # the flow head keeps its precision
    modulations = [m for name, m in model.named_modules() if name.endswith("modulation")]  # π0.5's adaRMS, likewise
    assert len(modulations) == (2 * model.config.expert_config.num_hidden_layers + 1 if variant == "pi05" else 0)
    assert not any(is_quantized(module.weight) for module in modulations)
    actions = model.generate_actions(*model_args(io), **flow_state(model.config, io), noise=io["noise"])
    expected = io["expected.sample_actions_10_steps"]
    assert (actions - expected).abs().max() < 0.01 * expected.abs().max()


@torch.no_grad()
def test_int8_pi0_fast_decodes(converted):
    """Decoding runs through torchao's kernels, the cache and the tied head alike. No closeness bound here: the
    fixture's random π0-FAST is chaotic (int8 weights in its projector alone move its logits by 10%), unlike the
    flow fixtures above; the shipped demo policy's success measures what int8 costs a trained model."""
    model = AutoModel.from_pretrained(converted("pi0_fast")).eval()
    io = load_fixture_io("pi0_fast")
    model.quantize_weights("int8")
    tokens = model.generate_actions(io["pixel_values"], io["pixel_attention_mask"], io["decode_prompt"].long(),
                                    io["decode_prompt_mask"], max_new_tokens=16)
    assert tokens.shape == (io["decode_prompt"].shape[0], 16)
    assert 0 <= tokens.min() and tokens.max() < model.config.text_config.vocab_size


@torch.no_grad()
def test_transformers_quantization_config_loads_a_quantized_model(tmp_path):
    from torchao.quantization import Int8WeightOnlyConfig

    model = noisy_tiny_model("pi05")
    inputs = random_inputs(model.config)
    expected = model.generate_actions(*model_args(inputs), noise=inputs["noise"])
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
    assert is_quantized(loaded.action_expert.layers[0].mlp.up_proj.weight)
    kept = [module.weight for name, module in loaded.named_modules()  # the flow head and the modulation, as documented
            if name.split(".")[-1] in loaded._keep_in_fp32_modules_strict and hasattr(module, "weight")]
    assert len(kept) > 5 and not any(is_quantized(weight) or weight.dtype != torch.float32 for weight in kept)
    actions = loaded.generate_actions(*model_args(inputs), noise=inputs["noise"])
    assert (actions - expected).abs().max() < 0.01 * expected.abs().max()
    loaded.save_pretrained(tmp_path / "int8")  # saved quantized, with the config that says how
    reloaded = AutoModel.from_pretrained(tmp_path / "int8")
    assert is_quantized(reloaded.action_expert.layers[0].mlp.up_proj.weight)
    torch.testing.assert_close(reloaded.generate_actions(*model_args(inputs), noise=inputs["noise"]), actions)


def test_weights_quantized_in_place_are_not_saved_and_nothing_is_written(tmp_path):
    model = noisy_tiny_model("pi05")
    model.quantize_weights("int8")
    with pytest.raises(ValueError, match="quantized by quantize_weights.*save the float model"):
        model.save_pretrained(tmp_path / "int8")
    assert not (tmp_path / "int8").exists()


@torch.no_grad()
def test_quantized_linears_keep_torchaos_kernels_under_optimize_for_cpu(monkeypatch):
    from modeling_pi import cpu_linears

    monkeypatch.setattr(cpu_linears, "lacks_bfloat16_arithmetic", lambda: True)
    monkeypatch.setattr(cpu_linears, "MIN_WEIGHT", 0)
    model = noisy_tiny_model("pi05").to(torch.bfloat16)
    inputs = random_inputs(model.config)
    names = model.quantize_weights("int8")
    quantized = model.generate_actions(*model_args(inputs), noise=inputs["noise"])
    taking = model.optimize_for_cpu()
    torch.testing.assert_close(model.generate_actions(*model_args(inputs), noise=inputs["noise"]), quantized)
    assert taking and set(taking).isdisjoint(names)  # it names only the linears that take its kernels


def test_unknown_formats_and_missing_kernels_are_refused_with_the_reason():
    model = noisy_tiny_model("pi0")
    with pytest.raises(ValueError, match="int8, int4"):
        model.quantize_weights("int3")
    try:
        copy.deepcopy(model).quantize_weights("int4", group_size=32)
    except RuntimeError as err:  # no int4 kernel for this device in this torchao
        assert "int4" in str(err) and "cpu" in str(err)


def test_a_quantization_that_quantizes_nothing_is_an_error_not_a_list_of_names():
    model = noisy_tiny_model("pi0")
    with pytest.raises(ValueError, match="group_size must be a whole number of input features, at least 1, got 0"):
        model.quantize_weights("int4", group_size=0)
    with pytest.raises(ValueError, match="torchao quantized none of the .* linears to int4 .*group_size 7 does not divide"):
        model.quantize_weights("int4", group_size=7)  # no input width of the model is a multiple of 7: torchao skips all
    assert not any(is_quantized(parameter) for parameter in model.parameters())
    assert not getattr(model, "_weights_quantized_in_place", False)  # before: marked quantized, so never saved


def test_a_quantized_model_refuses_a_cast_and_says_to_cast_first():
    model = noisy_tiny_model("pi05")
    inputs = random_inputs(model.config)
    model.quantize_weights("int8")
    with pytest.raises(ValueError, match="cast the model first .*then quantize it"):
        model.to(torch.bfloat16)  # before: torchao's weights stayed float32 and generation failed deep inside
    model.to(torch.float32)  # no change of dtype: allowed
    cast_first = noisy_tiny_model("pi05").to(torch.bfloat16)
    cast_first.quantize_weights("int8")
    cast_first.to(torch.bfloat16)
    assert cast_first.generate_actions(*model_args(inputs), noise=inputs["noise"].bfloat16()).isfinite().all()


def test_the_quantization_benchmark_compares_the_precisions_on_the_same_weights():
    from benchmarks.quantized import main

    rows = main(["--sizes", "tiny", "--variants", "pi0", "--repeats", "1"])["rows"]
    by_name = {row["model"]: row for row in rows}
    assert list(by_name) == ["float32", "bfloat16", "int8 weights, float32", "int8 weights, bfloat16"]
    assert by_name["float32"]["error"] == 0 and by_name["float32"]["ratio_to_float32"] == 1
    assert by_name["int8 weights, float32"]["weights_mib"] < 0.7 * by_name["float32"]["weights_mib"]
    float32_mib = by_name["float32"]["weights_mib"]  # bfloat16 halves all but the flow head, which stays float32
    assert float32_mib / 2 < by_name["bfloat16"]["weights_mib"] < 0.55 * float32_mib
    assert all(row["chunk_ms"] > 0 and row["error"] < 0.05 for row in rows)


def test_the_int8_products_benchmark_times_each_way_against_float32():
    from benchmarks.int8_products import bench

    rows = bench(1, {"small": (8, 64, 128)})
    assert [row["weights"] for row in rows] == ["float32", "float32, optimize_for_cpu", "int8 weights (torchao)",
                                                "int8 weights and activations (torchao)", "int8 dynamic (torch.ao, fbgemm)"]
    assert rows[0]["ratio_to_float32"] == 1 and rows[0]["error"] == 0 and rows[1]["error"] < 1e-6
    assert all(row["ms"] > 0 and 0 < row["error"] < 0.05 for row in rows[2:])  # quantized, and close


@torch.no_grad()
def test_a_model_quantized_through_transformers_refuses_a_cast_and_loads_in_its_own_dtype_only(tmp_path):
    """Quantized weights keep the dtype they were quantized in: a cast, or a saved quantized folder loaded in another
    dtype, would leave the rest computing in another (before: accepted, then generation failed deep inside)."""
    from torchao.quantization import Int8WeightOnlyConfig

    model = noisy_tiny_model("pi05")
    inputs = random_inputs(model.config)
    model.save_pretrained(tmp_path / "float")
    quantization = TorchAoConfig(Int8WeightOnlyConfig())
    loaded = AutoModel.from_pretrained(tmp_path / "float", quantization_config=quantization)
    with pytest.raises(ValueError, match="quantized weights keep their dtype: cast the model first"):
        loaded.to(torch.bfloat16)
    loaded.save_pretrained(tmp_path / "int8")
    with pytest.raises(ValueError, match="quantized in float32.*load it in float32"):
        AutoModel.from_pretrained(tmp_path / "int8", dtype=torch.bfloat16)
    assert AutoModel.from_pretrained(tmp_path / "int8").weight_dtypes() == (torch.float32, torch.float32)
    in_bfloat16 = AutoModel.from_pretrained(tmp_path / "float", dtype=torch.bfloat16, quantization_config=quantization)
    assert in_bfloat16.weight_dtypes() == (torch.bfloat16, torch.bfloat16)
    assert in_bfloat16.generate_actions(*model_args(inputs), noise=inputs["noise"].bfloat16()).isfinite().all()


def test_quantizing_a_quantized_model_again_is_an_error():
    model = noisy_tiny_model("pi0")
    model.quantize_weights("int8")
    for bits in ("int8", "int4"):  # before: an empty list, no word
        with pytest.raises(ValueError, match="quantized already"):
            model.quantize_weights(bits)


def test_fine_tuning_a_quantized_model_is_refused_before_anything_trains():
    from training_pi import apply_lora, set_full_finetuning

    model = noisy_tiny_model("pi05")
    model.quantize_weights("int8")
    for prepare in (apply_lora, set_full_finetuning):  # before: LoRA crashed at its first save, a full step skipped int8
        with pytest.raises(ValueError, match="fine-tuning takes float weights"):
            prepare(model)

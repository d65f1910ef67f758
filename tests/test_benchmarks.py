"""The benchmark harness compares like with like: one set of weights, the same inputs, equal outputs."""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.ablations import ABLATIONS, ablated, changes_inference, changes_training
from benchmarks.harness import main
from benchmarks.models import make_inputs, ours_alone, sharing_weights, transformers_pi0, transformers_pi05
from benchmarks.timing import peak_added_bytes
from modeling_pi import cpu_linears


def test_our_pi0_holds_the_very_tensors_of_transformers_pi0_and_samples_the_same_chunk():
    theirs = transformers_pi0("tiny")
    ours = sharing_weights(theirs, max_token_len=12)
    theirs_storage = {p.data_ptr() for p in theirs.parameters()}
    assert all(p.data_ptr() in theirs_storage for p in ours.parameters())
    inputs = make_inputs(ours.config, batch=2, cameras=3, prompt_tokens=5, device="cpu")
    with torch.no_grad():
        expected = theirs.sample_actions(**inputs.transformers(), state=inputs.state, noise=inputs.noise)
        actions = ours.generate_actions(**inputs.ours(), state=inputs.state, noise=inputs.noise)
    torch.testing.assert_close(actions, expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_our_pi05_holds_the_very_tensors_of_transformers_pi05_and_samples_the_same_chunk():
    theirs = transformers_pi05("tiny")
    ours = sharing_weights(theirs, max_token_len=12)
    theirs_storage = {p.data_ptr() for p in theirs.parameters()}
    assert all(p.data_ptr() in theirs_storage for p in ours.parameters())
    # transformers' init (adaRMS at zero, the rest small) leaves the expert's layers nearly out of the chunk: larger
    # random weights, drawn in place, so ours holds them too
    for parameter in theirs.parameters():
        parameter.normal_(0.0, 0.2)
    inputs = make_inputs(ours.config, batch=2, cameras=3, prompt_tokens=5, device="cpu", absent=1)
    expected = theirs.sample_actions(**inputs.transformers(), noise=inputs.noise)  # the state is in the prompt
    actions = ours.generate_actions(**inputs.ours(), noise=inputs.noise)
    torch.testing.assert_close(actions, expected, atol=1e-5, rtol=0)


def test_peak_memory_is_the_most_tensor_memory_a_call_holds_at_once_whatever_came_before():
    held = [torch.ones(1 << 20)]  # allocated before the call: not counted

    def call():
        blocks = [torch.ones(1 << 21) for _ in range(10)]  # 10 x 8 MiB at once
        del blocks
        one = torch.ones(1 << 24)  # 64 MiB: less than the blocks
        held.append(one[:1].clone())  # 4 bytes that outlive the call

    first, second = peak_added_bytes(call, torch.device("cpu")), peak_added_bytes(call, torch.device("cpu"))
    assert first == second  # the blocks freed by the first call do not make the second look cheaper
    assert 80 * 2**20 <= first < 81 * 2**20


def test_the_harness_reports_every_part_for_both_models_and_each_variant(tmp_path, capsys):
    rows = main(["--sizes", "tiny", "--variants", "pi0,pi05,pi0_fast", "--repeats", "1", "--json", str(tmp_path / "r.json")])
    by_model = {(row["variant"], row["model"]): row for row in rows}
    assert set(by_model) == {("pi0", "ours"), ("pi0", "transformers"), ("pi05", "ours"), ("pi05", "transformers"),
                             ("pi0_fast", "ours")}
    for variant in "pi0", "pi05":
        for key in ("vision_ms", "prefix_ms", "flow_ms", "total_ms", "train_ms", "peak_mib", "train_peak_mib"):
            assert by_model[variant, "ours"][key] > 0 and by_model[variant, "transformers"][key] > 0
        assert by_model[variant, "transformers"]["total_ratio"] == 1.0 and by_model[variant, "ours"]["total_ratio"] > 0
        assert by_model[variant, "ours"]["max_difference"] < 1e-5
        assert by_model[variant, "ours"]["gflop"] < by_model[variant, "transformers"]["gflop"]  # padding trimmed
    assert by_model["pi0_fast", "ours"]["per_token_ms"] > 0
    for key in ("pi0", "ours"), ("pi0", "transformers"), ("pi05", "ours"), ("pi05", "transformers"):
        row = by_model[key]  # arithmetic per chunk, and its rate
        assert row["gflop"] > 0 and row["gflop_per_s"] == pytest.approx(row["gflop"] / row["total_ms"] * 1e3)
    fast = by_model["pi0_fast", "ours"]  # the prefill's arithmetic and rate, and each further token's
    assert fast["gflop_per_s"] == pytest.approx(fast["gflop"] / fast["prefill_ms"] * 1e3)
    assert 0 < fast["per_token_gflop"] < fast["gflop"] and fast["per_token_gflop_per_s"] > 0
    printed = capsys.readouterr().out
    assert "| tiny | float32 | pi0 | transformers |" in printed and (tmp_path / "r.json").exists()


def _state(model) -> tuple:
    """What the ablations change: attention backend, compute options, the linears' classes and kernels."""
    linears = tuple((type(module).__name__, getattr(module, "upcast_bfloat16", None),
                     getattr(module, "transpose_few_rows", None))
                    for module in model.modules() if isinstance(module, torch.nn.Linear))
    return model.config._attn_implementation, model.compute_options, linears


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_each_optimisation_undone_by_an_ablation_leaves_the_chunk_and_training_unchanged(ablation, monkeypatch):
    ours = sharing_weights(transformers_pi0("tiny"), max_token_len=12)
    tolerance = 1e-5
    if ablation == "float32-products":  # it applies in bfloat16, on a CPU without bfloat16 units, to large products
        monkeypatch.setattr(cpu_linears, "lacks_bfloat16_arithmetic", lambda: True)
        monkeypatch.setattr(cpu_linears, "MIN_WEIGHT", 0)
        ours, tolerance = ours.to(torch.bfloat16), 0.05
    if ablation == "transposed-products":  # it applies to float32 products over few rows of large weights
        monkeypatch.setattr(cpu_linears, "MIN_TRANSPOSED_WEIGHT", 0)
    assert ours.optimize_for_cpu()
    inputs = make_inputs(ours.config, batch=2, cameras=3, prompt_tokens=5, device="cpu")
    inputs.pixel_attention_mask[:, 2] = False  # a camera no row has: trimming drops it
    before = _state(ours)
    during = ablated(ours, ablation, lambda **arguments: (_state(ours), arguments))()
    assert during != (before, {})  # the ablation changes the model or the training pass's arguments
    if changes_inference(ablation):
        with torch.no_grad():
            sample = lambda: ours.generate_actions(**inputs.ours(), state=inputs.state, noise=inputs.noise)  # noqa: E731
            expected = sample()
            torch.testing.assert_close(ablated(ours, ablation, sample)(), expected, atol=tolerance, rtol=0)
            assert torch.equal(sample(), expected)
    assert _state(ours) == before  # the ablation is undone afterwards
    if changes_training(ablation, "pi0"):  # ... and so is a training pass
        train = lambda: ours(**inputs.ours(), state=inputs.state, actions=inputs.actions, noise=inputs.noise,  # noqa: E731
                             timestep=inputs.timestep).velocity
        torch.testing.assert_close(ablated(ours, ablation, train)(), train(), atol=tolerance, rtol=0)
    if changes_training(ablation, "pi0_fast"):  # ... and π0-FAST's, as `PiCollator` asks for it
        fast = ours_alone("pi0_fast", "tiny", max_token_len=12)
        labels = inputs.input_ids.masked_fill(~inputs.attention_mask, -100)

        def train(**changed):
            return fast(**inputs.ours(), labels=labels, **{"output_logits": False, **changed}).losses

        torch.testing.assert_close(ablated(fast, ablation, train)(), train(), atol=tolerance, rtol=0)


def test_each_row_keeps_its_rounds_whose_median_is_its_time():
    rows = main(["--sizes", "tiny", "--variants", "pi0,pi0_fast", "--repeats", "3", "--no-train"])
    for row in rows:
        assert len(row["round_ms"]) == 3 and all(ms > 0 for ms in row["round_ms"])
    flow = rows[0]
    assert sorted(flow["round_ms"])[1] == pytest.approx(flow["total_ms"])
    ratios = [ours / theirs for ours, theirs in zip(flow["round_ms"], rows[1]["round_ms"])]
    assert sorted(ratios)[1] == pytest.approx(flow["total_ratio"])


def test_ablation_rows_are_timed_beside_ours_and_transformers(capsys):
    rows = main(["--sizes", "tiny", "--repeats", "1", "--no-train", "--ablations", "batched-cameras,prefix-trimming"])
    assert [row["model"] for row in rows] == ["ours", "transformers", "ours without batched-cameras", "ours without prefix-trimming"]
    assert all(row["total_ms"] > 0 and row["total_ratio"] > 0 for row in rows)
    assert [row["ratio_to_ours"] is None for row in rows] == [True, True, False, False]
    assert all(row["ratio_to_ours"] > 0 for row in rows[2:])
    assert "ours without prefix-trimming (" in capsys.readouterr().out  # its cost relative to ours, per round
    with pytest.raises(SystemExit):
        main(["--ablations", "no-such-thing"])


@pytest.mark.slow
def test_ablations_that_change_training_time_a_training_step_too(capsys):
    rows = main(["--sizes", "tiny", "--variants", "pi0,pi0_fast", "--repeats", "1", "--absent-cameras", "1",
                 "--ablations", "prefix-trimming,in-place-mlp,logit-skipping"])
    printed = capsys.readouterr().out
    assert "3 cameras (1 absent)" in printed
    by_model = {(row["variant"], row["model"]): row for row in rows}
    for variant in "pi0", "pi0_fast":  # the training pass leaves the absent camera out
        untrimmed = by_model[variant, "ours without prefix-trimming"]
        assert untrimmed["train_ms"] > 0 and untrimmed["train_ratio_to_ours"] > 0
        assert untrimmed["gflop"] > by_model[variant, "ours"]["gflop"]
    untrimmed = by_model["pi0", "ours without prefix-trimming"]
    assert untrimmed["train_ratio"] > 0  # against transformers' PI0 too
    assert f"× ours; training {untrimmed['train_ratio_to_ours']:.2f}×)" in printed
    assert "train_ms" not in by_model["pi0", "ours without in-place-mlp"]  # it applies only without gradients
    assert by_model["pi0", "ours"]["train_ms"] > 0 and "train_ratio_to_ours" not in by_model["pi0", "ours"]
    every_logit = by_model["pi0_fast", "ours without logit-skipping"]  # it changes only π0-FAST's training step
    assert every_logit["train_ms"] > 0 and "prefill_ms" not in every_logit and "gflop" not in every_logit
    assert every_logit["train_peak_mib"] > by_model["pi0_fast", "ours"]["train_peak_mib"]  # every slot's logits held
    assert f"ours without logit-skipping (training {every_logit['train_ratio_to_ours']:.2f}× ours)" in printed
    assert ("pi0", "ours without logit-skipping") not in by_model
    with pytest.raises(SystemExit):
        main(["--absent-cameras", "3"])


def test_ablations_add_rows_for_pi05_and_pi0_fast_too():
    rows = main(["--sizes", "tiny", "--variants", "pi05,pi0_fast", "--repeats", "1", "--no-train", "--ablations", "prefix-trimming"])
    assert [(row["variant"], row["model"]) for row in rows] == [
        ("pi05", "ours"), ("pi05", "transformers"), ("pi05", "ours without prefix-trimming"), ("pi0_fast", "ours"),
        ("pi0_fast", "ours without prefix-trimming")]
    assert all(row["ratio_to_ours"] > 0 for row in (rows[2], rows[4]))
    pi05, _, pi05_whole, fast, fast_whole = rows
    assert pi05_whole["total_ratio"] > 0  # timed against transformers' PI05 too
    assert pi05_whole["gflop"] > pi05["gflop"] and pi05_whole["total_ms"] > 0
    # untrimmed, π0-FAST's prefill keeps the prompt's padding and runs its last layer over every token
    assert fast_whole["gflop"] > fast["gflop"] and fast_whole["prefill_ms"] > 0 and fast_whole["per_token_ms"] > 0


def test_compile_adds_a_compiled_twin_beside_the_eager_model(capsys):
    rows = main(["--sizes", "tiny", "--repeats", "1", "--no-train", "--compile", "default"])
    assert [row["model"] for row in rows] == ["ours", "transformers", "ours, compiled (default)"]
    compiled = rows[2]
    assert compiled["total_ms"] > 0 and compiled["max_difference"] < 1e-5
    # the vision tower runs inside the compiled prefix pass: timed as part of it, not apart
    assert compiled["vision_ms"] is None and 0 < compiled["prefix_ms"] < compiled["total_ms"]
    assert compiled["flow_step_ms"] > 0 and rows[0]["vision_ms"] > 0
    assert "gflop" not in compiled and rows[0]["gflop"] > 0  # compiled kernels are invisible to the counter


@torch.no_grad()
def test_arithmetic_counts_the_products_whichever_kernel_computes_them():
    from benchmarks.arithmetic import count_gflop

    query, key = torch.randn(1, 4, 7, 8), torch.randn(1, 4, 9, 8)
    # the CPU's flash attention (not counted by PyTorch's counter): two products of 7 x 9 x 8 per head
    assert count_gflop(lambda: F.scaled_dot_product_attention(query, key, key)) * 1e9 == pytest.approx(2 * 2 * 4 * 7 * 9 * 8)

    ours = sharing_weights(transformers_pi0("tiny"), max_token_len=12)
    inputs = make_inputs(ours.config, batch=2, cameras=3, prompt_tokens=5, device="cpu")
    sample = lambda: ours.generate_actions(**inputs.ours(), state=inputs.state, noise=inputs.noise)  # noqa: E731
    counted = count_gflop(sample)
    assert count_gflop(ablated(ours, "sdpa", sample)) == pytest.approx(counted)  # eager attention's matmuls
    assert count_gflop(ablated(ours, "prefix-trimming", sample)) > counted


def test_rtc_times_a_guided_chunk_beside_ours():
    rows = main(["--sizes", "tiny", "--variants", "pi0,pi05,pi0_fast", "--repeats", "1", "--no-train", "--rtc"])
    by_model = {(row["variant"], row["model"]): row for row in rows}
    for variant in "pi0", "pi05":
        guided, ours = by_model[variant, "ours, guided (real-time chunking)"], by_model[variant, "ours"]
        assert guided["ratio_to_ours"] > 0 and guided["total_ms"] > ours["prefix_ms"]
        assert "gflop" not in guided  # the counter cannot follow the gradient taken inside the call
    assert ("pi0_fast", "ours, guided (real-time chunking)") not in by_model

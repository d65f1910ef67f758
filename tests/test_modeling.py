"""PiForActionGeneration behaviour a user relies on: the two paths agree, saving and loading are exact,
broken folders fail, gradient checkpointing is transparent, sampling is reproducible, bad input is refused,
the MLP computed in place when sampling is Gemma's."""

import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, GemmaConfig
from transformers.models.gemma.modeling_gemma import GemmaMLP

import modeling_pi  # noqa: F401
from benchmarks.timing import peak_added_bytes
from conftest import flow_state, load_fixture_io, model_args, noisy_tiny_model, random_inputs, tiny_config
from modeling_pi import PiConfig, PiForActionGeneration
from modeling_pi.joint_attention import gemma_mlp
from modeling_pi.modeling_pi import drop_unused_prefix

@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@torch.no_grad()
def test_joint_and_cached_paths_give_the_same_velocity(converted, variant):
    """At t=1, x_t is the noise, so one Euler step of the cached path is noise - v; the joint pass gives v."""
    model = AutoModel.from_pretrained(converted(variant)).eval()
    io = load_fixture_io(variant)
    batch = io["noise"].shape[0]
    state = flow_state(model.config, io)
    joint = model(*model_args(io), actions=io["actions"], **state, noise=io["noise"], timestep=torch.ones(batch))
    cached = io["noise"] - model.generate_actions(*model_args(io), **state, noise=io["noise"], num_steps=1)
    torch.testing.assert_close(cached, joint.velocity, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@torch.no_grad()
def test_cache_is_restored_between_flow_steps(variant):
    """Sampling twice from the same noise gives the same chunk, and 2 Euler steps equal two manual 1-step calls
    only if no step sees the previous step's suffix."""
    model = noisy_tiny_model(variant)
    inputs = random_inputs(model.config)
    args, state = model_args(inputs), flow_state(model.config, inputs)
    two_steps = model.generate_actions(*args, **state, noise=inputs["noise"], num_steps=2)
    torch.testing.assert_close(two_steps, model.generate_actions(*args, **state, noise=inputs["noise"], num_steps=2))
    batch = inputs["noise"].shape[0]
    v1 = model(*args, actions=inputs["actions"], **state, noise=inputs["noise"], timestep=torch.ones(batch)).velocity
    x_half = inputs["noise"] - 0.5 * v1
    # x_t at t=0.5 from (actions=x_half, noise=x_half) is x_half itself.
    v2 = model(*args, actions=x_half, **state, noise=x_half, timestep=torch.full((batch,), 0.5)).velocity
    torch.testing.assert_close(two_steps, x_half - 0.5 * v2, atol=1e-5, rtol=0)


def _mlp_and_input(hidden_act: str, dtype: torch.dtype):
    torch.manual_seed(0)
    config = GemmaConfig(hidden_size=64, intermediate_size=4096, hidden_act=hidden_act)
    return GemmaMLP(config).to(dtype), torch.randn(2, 100, 64, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hidden_act", ["gelu_pytorch_tanh", "silu"])
def test_mlp_without_gradients_computes_in_place_what_gemma_computes(hidden_act, dtype):
    """Gemma's MLP holds three hidden-width tensors at once (activation, up projection, product); ours holds
    only the activation beside what its projections allocate on their own. Those are measured, not assumed:
    a CPU's bfloat16 kernels, for one, take workspace that its float32 kernels do not."""
    mlp, x = _mlp_and_input(hidden_act, dtype)
    hidden_bytes = x.shape[0] * x.shape[1] * mlp.intermediate_size * x.element_size()
    with torch.no_grad():
        assert torch.equal(gemma_mlp(mlp, x), mlp(x))
        hidden = mlp.up_proj(x)
        projection = max(peak_added_bytes(lambda: mlp.up_proj(x), x.device),
                         peak_added_bytes(lambda: mlp.down_proj(hidden), x.device))
        assert peak_added_bytes(lambda: mlp(x), x.device) >= 3 * hidden_bytes
        assert peak_added_bytes(lambda: gemma_mlp(mlp, x), x.device) <= hidden_bytes + projection


def test_mlp_with_gradients_is_gemmas_and_backpropagates():
    mlp, x = _mlp_and_input("gelu_pytorch_tanh", torch.float32)
    x.requires_grad_(True)
    gemma_mlp(mlp, x).square().sum().backward()
    ours = x.grad.clone(), mlp.gate_proj.weight.grad.clone()
    x.grad = None
    mlp.zero_grad()
    mlp(x).square().sum().backward()
    assert torch.equal(ours[0], x.grad) and torch.equal(ours[1], mlp.gate_proj.weight.grad)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_save_and_load_round_trip_exactly(tmp_path, variant):
    model = noisy_tiny_model(variant)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "pi"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, PiForActionGeneration) and loaded.config.variant == variant
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    for name in original:
        assert torch.equal(original[name], reloaded[name]), name
    inputs = random_inputs(model.config)
    with torch.no_grad():
        a = model.generate_actions(*model_args(inputs), **flow_state(model.config, inputs), noise=inputs["noise"])
        b = loaded.generate_actions(*model_args(inputs), **flow_state(model.config, inputs), noise=inputs["noise"])
    assert torch.equal(a, b)


@pytest.mark.parametrize("damage", ["missing", "misshaped", "unexpected"])
def test_loading_a_damaged_folder_fails_instead_of_initialising_at_random(tmp_path, damage):
    noisy_tiny_model("pi0").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    if damage == "missing":
        del weights["action_out_proj.weight"]
    elif damage == "misshaped":
        weights["action_out_proj.weight"] = torch.zeros(3, 3)
    else:
        weights["surplus.weight"] = torch.zeros(3)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises((ValueError, RuntimeError), match="action_out_proj|surplus|mismatch|ignore_mismatched_sizes"):
        AutoModel.from_pretrained(tmp_path)
    with pytest.raises((ValueError, RuntimeError)):
        AutoModel.from_pretrained(tmp_path, ignore_mismatched_sizes=True)


CHECKPOINTING = {"default": {}, "reentrant": {"activation_checkpointing_kwargs": {"use_reentrant": True}},
                 "every_2nd_layer": {"every_n_layers": 2}}


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@pytest.mark.parametrize("options", CHECKPOINTING.values(), ids=CHECKPOINTING.keys())
def test_gradient_checkpointing_gives_the_same_gradients(variant, options):
    inputs = random_inputs(tiny_config(variant))
    inputs["timestep"] = torch.tensor([0.3, 0.8])
    layers = tiny_config(variant).text_config.num_hidden_layers

    def grads(checkpointing):
        model = noisy_tiny_model(variant).train()
        calls = []
        if checkpointing:
            model.activation_checkpointing_enable(**options)
            checkpoint = model._gradient_checkpointing_func
            model._gradient_checkpointing_func = lambda *a, **k: calls.append(1) or checkpoint(*a, **k)
        loss = model(**inputs).loss
        loss.backward()
        marked = sum(layer.gradient_checkpointing for layer in model.language_model.layers)  # as transformers chose
        assert len(calls) == (marked if checkpointing else 0)
        if checkpointing:
            assert 0 < marked < layers if "every_n_layers" in options else marked == layers
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss, plain = grads(False)
    loss_ckpt, checkpointed = grads(True)
    if not options:  # the model's flag set by hand, no layer marked: every joint layer is checkpointed
        model, calls = noisy_tiny_model(variant).train(), []
        model.gradient_checkpointing = True
        model._gradient_checkpointing_func = lambda *a, **k: calls.append(1) or torch.utils.checkpoint.checkpoint(
            *a, use_reentrant=False, **k)
        model(**inputs).loss.backward()
        assert len(calls) == layers
    torch.testing.assert_close(loss_ckpt, loss)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_training_pass_draws_noise_and_time_and_backpropagates_into_both_experts():
    model = noisy_tiny_model("pi05").train()
    inputs = random_inputs(model.config)
    del inputs["noise"]
    out = model(**inputs)
    assert out.loss.ndim == 0 and out.losses.shape == (2, 8) and out.velocity.shape == (2, 8, 32)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name in ("language_model.layers.0.self_attn.q_proj.weight", "action_expert.layers.0.mlp.up_proj.weight",
                 "action_expert.layers.0.input_layernorm.modulation.weight", "vision_tower.embeddings.patch_embedding.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


@torch.no_grad()
def test_sampling_is_reproducible_with_a_generator():
    model = noisy_tiny_model("pi0")
    inputs = random_inputs(model.config)
    args, state = model_args(inputs), inputs["state"]
    first = model.generate_actions(*args, state=state, generator=torch.Generator().manual_seed(7))
    again = model.generate_actions(*args, state=state, generator=torch.Generator().manual_seed(7))
    other = model.generate_actions(*args, state=state, generator=torch.Generator().manual_seed(8))
    assert first.shape == (2, 8, 32)
    assert torch.equal(first, again) and not torch.allclose(first, other)


@torch.no_grad()
def test_masked_camera_and_padding_do_not_leak_into_actions():
    """Changing what sits behind a masked camera or a padded prompt token must not change the actions."""
    model = noisy_tiny_model("pi05")
    inputs = random_inputs(model.config)
    args = model_args(inputs)
    actions = model.generate_actions(*args, noise=inputs["noise"])
    pixel_values, input_ids = inputs["pixel_values"].clone(), inputs["input_ids"].clone()
    pixel_values[-1, -1] = -pixel_values[-1, -1]  # the masked camera
    input_ids[-1, -1] = (input_ids[-1, -1] + 1) % 1024  # a padded position
    changed = model.generate_actions(pixel_values, args[1], input_ids, args[3], noise=inputs["noise"])
    torch.testing.assert_close(changed, actions, atol=1e-6, rtol=0)
    # ...while the same change on a visible camera does change them.
    pixel_values[0, 0] = -pixel_values[0, 0]
    assert not torch.allclose(model.generate_actions(pixel_values, *args[1:], noise=inputs["noise"])[0], actions[0])


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@torch.no_grad()
def test_a_row_samples_the_same_alone_as_beside_a_row_using_every_camera_and_prompt_slot(variant):
    """Alone, the last row's absent camera and padded prompt slots leave the prefix; beside the first row,
    which uses them, they stay in it, masked. The row's chunk must not depend on which."""
    model = noisy_tiny_model(variant)
    inputs = random_inputs(model.config)
    alone = [x[-1:] for x in model_args(inputs)]
    pixel_values, _, input_ids, _ = drop_unused_prefix(*alone)
    assert pixel_values.shape[1] == 2 and input_ids.shape[1] == 3  # one camera and three prompt slots dropped
    assert drop_unused_prefix(*alone, bucket=2)[2].shape[1] == 4  # compiled generation's buckets: a multiple of 2
    assert drop_unused_prefix(*alone, bucket=16)[2].shape[1] == 6  # ... or every slot
    state, noise = flow_state(model.config, inputs), inputs["noise"]
    batched = model.generate_actions(*model_args(inputs), **state, noise=noise)[-1:]
    last = {name: value[-1:] for name, value in state.items()}
    torch.testing.assert_close(model.generate_actions(*alone, **last, noise=noise[-1:]), batched, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_a_row_trains_the_same_alone_as_beside_a_row_using_every_camera_and_prompt_slot(variant):
    """The training pass trims the prefix as sampling does, and the language model's last layer computes only
    the prefix's keys and values: the row's loss and every gradient must not depend on either."""
    model = noisy_tiny_model(variant).train()
    inputs = random_inputs(model.config)
    inputs["timestep"] = torch.tensor([0.3, 0.8])
    last_mlp_rows, images = [], []
    model.language_model.layers[-1].mlp.register_forward_hook(lambda m, args, out: last_mlp_rows.append(args[0].shape[1]))
    model.vision_tower.embeddings.register_forward_hook(lambda m, args, out: images.append(out.shape[0]))

    def loss_and_gradients(batch_inputs, row):
        model.zero_grad()
        loss = model(**batch_inputs).losses[row].mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    beside, beside_grads = loss_and_gradients(inputs, -1)
    alone, alone_grads = loss_and_gradients({k: v[-1:] for k, v in inputs.items()}, 0)
    torch.testing.assert_close(alone, beside, atol=1e-6, rtol=1e-5)
    assert alone_grads.keys() == beside_grads.keys()
    assert "vision_tower.embeddings.patch_embedding.weight" in alone_grads
    for name in alone_grads:
        torch.testing.assert_close(alone_grads[name], beside_grads[name], atol=1e-6, rtol=1e-4, msg=name)
    assert images == [6, 2]  # alone, the row's absent camera leaves the prefix
    assert last_mlp_rows == []  # no prefix token's output is computed in the last layer
    last = f"language_model.layers.{model.config.text_config.num_hidden_layers - 1}."
    assert not any(name.startswith(last + "mlp") for name in alone_grads)


@torch.no_grad()
def test_compiled_flow_generation_samples_what_the_eager_one_does():
    """π0.5 (the adaRMS path), heun (two evaluations per step), prefix pass and step compiled; a second batch
    of the same shape reuses the compiled code and its cache, reset in place, so it must not see the first
    batch's prefix."""
    model = noisy_tiny_model("pi05")
    first, second = random_inputs(model.config, seed=0), random_inputs(model.config, seed=1)
    eager = [model.generate_actions(*model_args(x), noise=x["noise"], num_steps=3, solver="heun") for x in (first, second)]
    alone = [x[-1:] for x in model_args(first)]  # its absent camera goes; its padded prompt slots stay (bucket of 16)
    eager.append(model.generate_actions(*alone, noise=first["noise"][-1:], num_steps=3, solver="heun"))
    model.compile_generation()
    for inputs, expected in zip((first, second), eager):
        compiled = model.generate_actions(*model_args(inputs), noise=inputs["noise"], num_steps=3, solver="heun")
        torch.testing.assert_close(compiled, expected, atol=1e-5, rtol=0)
    compiled = model.generate_actions(*alone, noise=first["noise"][-1:], num_steps=3, solver="heun")
    torch.testing.assert_close(compiled, eager[-1], atol=1e-5, rtol=0)
    assert len(model.compiled_generation.caches) == 2  # batch 2 with every camera, batch 1 with two


def test_compiled_generation_first_called_under_inference_mode_serves_later_calls_outside_it():
    """`pi serve` samples plain chunks under torch.inference_mode and guided ones under torch.no_grad: the cache
    kept for a shape must take both, in either order."""
    model = noisy_tiny_model("pi05")
    inputs = random_inputs(model.config)
    options = {"noise": inputs["noise"], "num_steps": 2}
    with torch.no_grad():
        eager = model.generate_actions(*model_args(inputs), **options)
    model.compile_generation()
    with torch.inference_mode():
        first = model.generate_actions(*model_args(inputs), **options)
    with torch.no_grad():
        later = model.generate_actions(*model_args(inputs), **options)
    torch.testing.assert_close(first, eager, atol=1e-5, rtol=0)
    torch.testing.assert_close(later, eager, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["pi0", "pi0_fast"])
@torch.no_grad()
def test_compiled_generation_has_no_graph_break(variant):
    """With `fullgraph=True` the compiler refuses to break a graph: the prefix pass and the repeated step each
    compile whole, and generate what the eager model does."""
    model = noisy_tiny_model(variant)
    inputs = random_inputs(model.config)
    flow = {**flow_state(model.config, inputs), "noise": inputs["noise"], "num_steps": 3}
    options = {"max_new_tokens": 6} if variant == "pi0_fast" else flow
    eager = model.generate_actions(*model_args(inputs), **options)
    model.compile_generation(fullgraph=True)
    compiled = model.generate_actions(*model_args(inputs), **options)
    if variant == "pi0_fast":
        assert torch.equal(compiled, eager)
    else:
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)


@torch.no_grad()
def test_compiling_only_the_flow_step_leaves_the_prefix_pass_eager():
    """`prefix=False` spares the prefix pass its compilation (vision tower and language model: the larger graph); the
    chunk is unchanged."""
    model = noisy_tiny_model("pi0")
    inputs = random_inputs(model.config)
    eager = model.generate_actions(*model_args(inputs), state=inputs["state"], noise=inputs["noise"])
    model.compile_generation(prefix=False)
    assert not model.compiled_generation.compiles_prefix
    assert model.generation_runtime().prefix == model.encode_prefix
    compiled = model.generate_actions(*model_args(inputs), state=inputs["state"], noise=inputs["noise"])
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
@torch.no_grad()
def test_solvers_run_on_the_model(solver):
    model = noisy_tiny_model("pi0")
    inputs = random_inputs(model.config)
    options = {"state": inputs["state"], "noise": inputs["noise"], "solver": solver, "num_steps": 3}
    actions = model.generate_actions(*model_args(inputs), **options)
    assert actions.shape == inputs["noise"].shape and torch.isfinite(actions).all()


@pytest.mark.parametrize("solver", ["heun", "rk4"])
@torch.no_grad()
def test_heun_and_rk4_converge_to_the_euler_answer_as_steps_grow(solver):
    """All three solve the same ODE: their gap to Euler at equal steps shrinks like Euler's own O(1/n) error."""
    model = noisy_tiny_model("pi05")
    inputs = random_inputs(model.config)
    args, noise = model_args(inputs), inputs["noise"]
    gaps = [(model.generate_actions(*args, noise=noise, num_steps=n, solver=solver)
             - model.generate_actions(*args, noise=noise, num_steps=n)).abs().max().item() for n in (1, 4, 16, 64)]
    assert all(later < earlier / 3 for earlier, later in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < gaps[0] / 30, gaps


# ---- bad input -------------------------------------------------------------------------------------


def _bad_cases():
    def edit(**changes):
        return changes

    return {
        "camera count": (edit(pixel_values=lambda x: x[:, :2], pixel_attention_mask=lambda m: m[:, :2]), "cameras"),
        "image size": (edit(pixel_values=lambda x: x[..., :14, :14]), "pixel_values"),
        "state dim": (edit(state=lambda s: s[:, :7]), "state"),
        "action dim": (edit(actions=lambda a: a[..., :7]), "actions"),
        "action horizon": (edit(actions=lambda a: a[:, :3]), "actions"),
        "NaN state": (edit(state=lambda s: s.index_fill(1, torch.tensor([0]), float("nan"))), "state.*NaN"),
        "inf actions": (edit(actions=lambda a: a.index_fill(2, torch.tensor([1]), float("inf"))), "actions.*infinite"),
        "batch sizes": (edit(state=lambda s: s[:1]), "state"),
        "prompt batch": (edit(input_ids=lambda i: i[:1], attention_mask=lambda m: m[:1]), "input_ids"),
        "empty batch": ({name: (lambda x: x[:0]) for name in ("pixel_values", "pixel_attention_mask", "input_ids",
                                                                 "attention_mask", "state", "actions", "noise")},
                        "[Ee]mpty batch"),
        "token ids": (edit(input_ids=lambda i: i + 5000), "input_ids"),
        "raw 0..255 pixels": (edit(pixel_values=lambda x: (x + 1) * 127.5), r"pixel_values must lie in \[-1, 1\]"),
        "uint8 pixels": (edit(pixel_values=lambda x: ((x + 1) * 127.5).to(torch.uint8)), "pixel_values must be floats"),
        "NaN pixels": (edit(pixel_values=lambda x: x.index_fill(2, torch.tensor([0]), float("nan"))), "pixel_values.*NaN"),
        "mask shape": (edit(attention_mask=lambda m: m[:, :2]), "attention_mask"),
        # a row that sees nothing: its chunk came from the prompt alone, and looked like any other
        "no camera in a row": (edit(pixel_attention_mask=lambda m: m.index_fill(0, torch.tensor([0]), False)),
                               r"pixel_attention_mask: example\(s\) \[0\] have no camera present"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()), ids=str)
def test_bad_input_raises_a_value_error_naming_the_problem(case):
    changes, message = _bad_cases()[case]
    model = noisy_tiny_model("pi0")
    inputs = random_inputs(model.config)
    for name, change in changes.items():
        inputs[name] = change(inputs[name])
    with pytest.raises(ValueError, match=message):
        model(**inputs)
    if "actions" not in changes:
        with pytest.raises(ValueError, match=message):
            model.generate_actions(*model_args(inputs), state=inputs["state"], noise=inputs["noise"])


@pytest.mark.parametrize("timestep, message", [
    (torch.tensor([5.0, -3.0]), r"timestep is the flow time, from 0 \(the actions\) to 1 \(noise\); got values in \[-3, 5\]"),
    (0.5, "timestep must be a torch.Tensor, got float"),
])
def test_a_flow_time_outside_0_to_1_or_not_a_tensor_is_refused(timestep, message):
    model = noisy_tiny_model("pi0")
    with pytest.raises(ValueError, match=message):
        model(**random_inputs(model.config), timestep=timestep)


@pytest.mark.parametrize("name", ["pixel_values", "noise"])
def test_inputs_that_are_not_tensors_are_refused_naming_them(name):
    model = noisy_tiny_model("pi0")
    inputs = random_inputs(model.config)
    inputs[name] = inputs[name].numpy()  # e.g. a processor asked for return_tensors="np"
    with pytest.raises(ValueError, match=f"{name} must be a torch.Tensor, got ndarray"):
        model(**inputs)


VALUE_CASES = ("NaN state", "inf actions", "token ids", "raw 0..255 pixels", "NaN pixels", "no camera in a row")  # the rest are shapes, dtypes


@pytest.mark.parametrize("case", list(_bad_cases()), ids=str)
def test_value_checks_read_only_host_tensors_and_shape_checks_every_tensor(case):
    """A tensor off the host (here on the "meta" device, whose values cannot be read at all) has its values left
    unchecked, so an accelerator never waits for one to come back; its shape and dtype are checked all the same."""
    from modeling_pi.input_checks import check_flow_inputs, check_inputs

    changes, message = _bad_cases()[case]
    model = noisy_tiny_model("pi0")
    inputs = random_inputs(model.config)
    for name, change in changes.items():
        inputs[name] = change(inputs[name])
    off_host = {name: tensor.to("meta") for name, tensor in inputs.items()}

    def check():
        check_inputs(model.config, *model_args(off_host))
        check_flow_inputs(model.config, off_host["pixel_values"].shape[0], off_host["state"], off_host["actions"])

    if case in VALUE_CASES:
        check()
    else:
        with pytest.raises(ValueError, match=message):
            check()


def test_pi0_without_state_and_training_without_actions_are_refused():
    model = noisy_tiny_model("pi0")
    inputs = random_inputs(model.config)
    with pytest.raises(ValueError, match="state"):
        model.generate_actions(*model_args(inputs))
    with pytest.raises(ValueError, match="actions"):
        model(*model_args(inputs), state=inputs["state"])


def test_pi05_refuses_a_state_given_to_the_model():
    model = noisy_tiny_model("pi05")
    inputs = random_inputs(model.config)
    state = torch.zeros(len(inputs["actions"]), model.config.action_dim)
    with pytest.raises(ValueError, match="π0.5 reads the robot state in its prompt"):
        model.generate_actions(*model_args(inputs), state=state)
    with pytest.raises(ValueError, match="π0.5 reads the robot state in its prompt"):
        model(*model_args(inputs), actions=inputs["actions"], state=state)


@pytest.mark.parametrize("options, message", [
    ({"solver": "midpoint"}, "solver"),
    ({"num_steps": 0}, "num_steps must be a whole number of at least 1, got 0"),
    ({"num_steps": True}, "num_steps must be a whole number of at least 1, got True"),  # ran 1 step
    ({"num_steps": 2.5}, "num_steps must be a whole number of at least 1, got 2.5"),
    # real-time chunking's options without prev_actions were ignored, a misspelt schedule with them
    ({"inference_delay": 2, "execution_horizon": 4}, "pass prev_actions with them, or neither"),
    ({"prefix_schedule": "cosine"}, "Unknown prefix_schedule 'cosine'"),
])
def test_bad_sampling_options_are_refused(options, message):
    model = noisy_tiny_model("pi05")
    inputs = random_inputs(model.config)
    with pytest.raises(ValueError, match=re.escape(message)):
        model.generate_actions(*model_args(inputs), **options)


def test_float_token_ids_and_fractional_padding_flags_are_refused():
    model = noisy_tiny_model("pi0")
    inputs = random_inputs(model.config)
    args = list(model_args(inputs))
    args[2] = args[2].float()  # before: torch's embedding error
    with pytest.raises(ValueError, match="input_ids must hold integer token ids, got torch.float32"):
        model.generate_actions(*args, state=inputs["state"])
    half = torch.full(inputs["actions"].shape[:2], 0.5)  # before: read as all padded, a loss of 0
    with pytest.raises(ValueError, match="action_is_pad must be True/False"):
        model(*model_args(inputs), state=inputs["state"], actions=inputs["actions"], action_is_pad=half)


def test_auto_classes_know_the_pi_model_type():
    config = AutoConfig.for_model("pi", variant="pi05")
    assert isinstance(config, PiConfig) and config.use_adarms
    with torch.device("meta"):
        assert isinstance(AutoModel.from_config(tiny_config("pi05")), PiForActionGeneration)


def test_a_new_model_starts_like_the_reference():
    """Gemma norms (scale 1 + w) start at w = 0 and the adaRMS modulation at zero: plain norms, closed gates."""
    model = PiForActionGeneration(tiny_config("pi05"))
    gemma_norms = [p for n, p in model.named_parameters()
                   if n.startswith(("language_model", "action_expert")) and ("norm" in n or "modulation" in n)]
    assert len(gemma_norms) == 2 * 2 + 1 + 2 * 2 * 2 + 2  # LM: 2 per layer + final; expert: (w, b) × (2 per layer + final)
    assert all(p.abs().max() == 0 for p in gemma_norms)
    assert model.action_in_proj.weight.std() > 0 and model.vision_tower.post_layernorm.weight.eq(1).all()


@torch.no_grad()
@pytest.mark.parametrize("cast", [
    lambda folder: AutoModel.from_pretrained(folder, dtype=torch.bfloat16),
    lambda folder: AutoModel.from_pretrained(folder).to(torch.bfloat16),
    lambda folder: AutoModel.from_pretrained(folder).bfloat16(),
], ids=["loaded", "to", "bfloat16"])
def test_bfloat16_keeps_the_flow_head_and_adarms_modulation_in_float32(converted, cast):
    model = cast(converted("pi05"))
    kept = [model.action_in_proj, model.action_out_proj, model.time_mlp_in, model.time_mlp_out,
            model.action_expert.layers[0].input_layernorm.modulation, model.action_expert.norm.modulation]
    assert all(module.weight.dtype == module.bias.dtype == torch.float32 for module in kept)
    assert model.language_model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert model.action_expert.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    loaded = AutoModel.from_pretrained(converted("pi05"), dtype=torch.bfloat16)
    assert all(torch.equal(mine, theirs) and mine.dtype == theirs.dtype
               for mine, theirs in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert model.float().action_expert.layers[0].mlp.up_proj.weight.dtype == torch.float32  # and back

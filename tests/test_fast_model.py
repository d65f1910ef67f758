"""π0-FAST: the reference's loss and greedy tokens, cached decoding, sampling options, refusals."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

import modeling_pi  # noqa: F401
from conftest import load_fixture_io, model_args, noisy_tiny_model, random_inputs, tiny_config
from modeling_pi import PiForActionGeneration
from modeling_pi.fast_decoding import choose_token
from modeling_pi.joint_attention import block_causal_mask, last_valid_position

def _prompt(io):
    return io["pixel_values"], io["pixel_attention_mask"], io["decode_prompt"].long(), io["decode_prompt_mask"]


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def fast_case(request, converted):
    model = AutoModel.from_pretrained(converted("pi0_fast"), attn_implementation=request.param).eval()
    return model, load_fixture_io("pi0_fast")


@torch.no_grad()
def test_per_example_loss_matches_the_reference(fast_case):
    model, io = fast_case
    labels = io["input_ids"].masked_fill(~io["token_loss_mask"], -100)
    out = model(io["pixel_values"], io["pixel_attention_mask"], io["input_ids"], io["attention_mask"],
                token_type_ids=io["token_ar_mask"].long(), labels=labels)
    torch.testing.assert_close(out.losses, io["expected.loss"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.loss, io["expected.loss"].mean(), atol=1e-4, rtol=0)
    assert out.logits.shape == (*io["input_ids"].shape, model.config.text_config.vocab_size)
    without_logits = model(io["pixel_values"], io["pixel_attention_mask"], io["input_ids"], io["attention_mask"],
                           token_type_ids=io["token_ar_mask"].long(), labels=labels, output_logits=False)
    torch.testing.assert_close(without_logits.losses, io["expected.loss"], atol=1e-4, rtol=0)
    assert without_logits.logits is None


@torch.no_grad()
def test_greedy_tokens_match_the_reference(fast_case):
    model, io = fast_case
    tokens = model.generate_actions(*_prompt(io), max_new_tokens=16)
    assert torch.equal(tokens, io["expected.greedy_tokens_16"].long())


@torch.no_grad()
def test_compiled_decoding_gives_the_reference_tokens(converted):
    model = AutoModel.from_pretrained(converted("pi0_fast")).eval()
    io = load_fixture_io("pi0_fast")
    model.compile_generation()
    for _ in range(2):  # the second call reuses the compiled code and its cache, reset in place
        assert torch.equal(model.generate_actions(*_prompt(io), max_new_tokens=16), io["expected.greedy_tokens_16"].long())
    assert len(model.compiled_generation.caches) == 1


def decode_by_recomputing(model, *prompt, max_new_tokens, temperature=0.0, generator=None, allowed_token_ids=None,
                          reference_positions=True) -> torch.Tensor:
    """π0-FAST's tokens as their definition has them, through the model's public methods: each step runs the
    whole sequence again (the untrimmed prefix, then the generated tokens, causally), with no cache."""
    embeds, seen = model.embed_prefix(*prompt)
    batch = len(seen)
    positions, roles = seen.long().cumsum(1) - 1, torch.zeros_like(seen)
    next_position = seen.sum(dim=1, keepdim=True) + int(reference_positions)
    head = model.lm_head_weight() if allowed_token_ids is None else model.lm_head_weight()[allowed_token_ids]
    finished, tokens = torch.zeros(batch, dtype=torch.bool), []
    for step in range(max_new_tokens):
        hidden, _ = model.run_experts(embeds, None, *model.attention_inputs(block_causal_mask(seen, roles), positions, embeds))
        last = hidden[torch.arange(batch), last_valid_position(seen)]
        choice = choose_token(F.linear(last, head).float(), temperature, generator)
        token = (choice if allowed_token_ids is None else allowed_token_ids[choice]).masked_fill(finished, model.config.text_config.pad_token_id)
        tokens.append(token)
        finished |= token == model.config.text_config.eos_token_id
        if finished.all():
            break
        embeds = torch.cat([embeds, model.language_model.embed_tokens(token[:, None])], dim=1)
        seen, roles = F.pad(seen, (0, 1), value=True), F.pad(roles, (0, 1), value=True)
        positions, next_position = torch.cat([positions, next_position], dim=1), next_position + 1
    return torch.stack(tokens, dim=1)


@torch.no_grad()
def test_cached_decoding_equals_recomputing_the_whole_sequence(fast_case):
    model, io = fast_case
    for options in ({}, {"reference_positions": False}, {"temperature": 1.0}):
        cached = model.generate_actions(*_prompt(io), max_new_tokens=12, generator=torch.Generator().manual_seed(3), **options)
        full = decode_by_recomputing(model, *_prompt(io), max_new_tokens=12, generator=torch.Generator().manual_seed(3),
                                     **options)
        assert torch.equal(cached, full), options


@torch.no_grad()
def test_a_row_decodes_the_same_alone_without_its_unused_prefix_as_beside_a_row_using_it():
    """Alone, the last row's absent camera and padded prompt slots stay out of the prefix pass; beside the first
    row, which uses them, they are in it, masked. Its tokens must not depend on which."""
    model = noisy_tiny_model("pi0_fast")
    args = model_args(random_inputs(model.config))
    widths, encode_prefix = [], model.encode_prefix
    model.encode_prefix = lambda *inputs, **kwargs: widths.append((inputs[0].shape[1], inputs[2].shape[1])) or encode_prefix(
        *inputs, **kwargs)
    options = {"max_new_tokens": 6, "allowed_token_ids": torch.arange(100, 1024)}  # no EOS: six tokens each
    batched = model.generate_actions(*args, **options)
    alone = model.generate_actions(*[x[-1:] for x in args], **options)
    assert widths == [(3, 6), (2, 3)]  # (cameras, prompt slots) in each prefix pass
    assert torch.equal(alone, batched[-1:])


@torch.no_grad()
def test_the_prefills_last_layer_runs_only_each_rows_last_token():
    """Only each row's last valid token's output is read after the prefill (its logits give the first token):
    the last layer computes every token's keys and values, but its MLP sees that one token per row. The rows
    end at different positions; the tokens match decoding that recomputes every position of every layer."""
    model = noisy_tiny_model("pi0_fast")
    args = model_args(random_inputs(model.config))
    seen = {}
    for name, layer in (("first", model.language_model.layers[0]), ("last", model.language_model.layers[-1])):
        mlp_input = layer.mlp.gate_proj  # the MLP's first projection sees the tokens the MLP does
        mlp_input.register_forward_pre_hook(lambda _, inputs, name=name: seen.setdefault(name, inputs[0].shape[:2]) and None)
    options = {"max_new_tokens": 6, "allowed_token_ids": torch.arange(100, 1024)}  # no EOS: six tokens each
    tokens = model.generate_actions(*args, **options)
    prefix_len = 3 * model.config.num_image_tokens + args[2].shape[1]
    assert seen == {"first": (2, prefix_len), "last": (2, 1)}  # the prefill's calls (decoding steps come later)
    assert torch.equal(tokens, decode_by_recomputing(model, *args, **options))


@torch.no_grad()
def test_reference_positions_matter(fast_case):
    """The reference skips one position after the prompt; contiguous positions decode differently."""
    model, io = fast_case
    contiguous = model.generate_actions(*_prompt(io), max_new_tokens=16, reference_positions=False)
    assert not torch.equal(contiguous, io["expected.greedy_tokens_16"].long())


def _tiny_fast(seed=0):
    torch.manual_seed(seed)
    return PiForActionGeneration(tiny_config("pi0_fast")).eval()


def _tiny_prompt(model):
    inputs = random_inputs(model.config)
    return inputs["pixel_values"], inputs["pixel_attention_mask"], inputs["input_ids"], inputs["attention_mask"]


@torch.no_grad()
def test_sampling_is_reproducible_and_constrained_decoding_stays_in_the_allowed_set():
    model = _tiny_fast()
    prompt = _tiny_prompt(model)
    first = model.generate_actions(*prompt, max_new_tokens=8, temperature=1.0, generator=torch.Generator().manual_seed(1))
    again = model.generate_actions(*prompt, max_new_tokens=8, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert first.shape == (2, 8) and torch.equal(first, again)
    allowed = torch.arange(700, 720)
    for temperature in (0.0, 1.0):
        tokens = model.generate_actions(*prompt, max_new_tokens=8, temperature=temperature, allowed_token_ids=allowed)
        assert torch.isin(tokens, allowed).all()


@torch.no_grad()
def test_decoding_stops_once_every_row_emitted_eos():
    model = _tiny_fast()
    eos = model.config.text_config.eos_token_id
    tokens = model.generate_actions(*_tiny_prompt(model), max_new_tokens=8, allowed_token_ids=[eos])
    assert tokens.tolist() == [[eos], [eos]]


def test_training_pass_backpropagates_into_vision_and_language_model():
    model = _tiny_fast().train()
    pixel_values, pixel_attention_mask, input_ids, attention_mask = _tiny_prompt(model)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 3:] = 1
    labels = input_ids.masked_fill(token_type_ids == 0, -100)
    out = model(pixel_values, pixel_attention_mask, input_ids, attention_mask, token_type_ids=token_type_ids, labels=labels)
    assert out.losses.shape == (2,) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.vision_tower.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert model.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_a_row_trains_the_same_alone_without_the_camera_no_row_has_as_beside_a_row_using_it():
    """The training pass leaves out of the prefix the cameras absent from every row (its prompt slots stay:
    the logits cover every one); the row's loss, logits and gradients must not depend on it."""
    model = _tiny_fast().train()
    pixel_values, pixel_attention_mask, input_ids, attention_mask = _tiny_prompt(model)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 1:] = 1
    labels = input_ids.masked_fill((token_type_ids == 0) | ~attention_mask, -100)
    images = []
    model.vision_tower.embeddings.register_forward_hook(lambda m, args, out: images.append(out.shape[0]))

    def train(rows, row):
        model.zero_grad()
        out = model(pixel_values[rows], pixel_attention_mask[rows], input_ids[rows], attention_mask[rows],
                    token_type_ids=token_type_ids[rows], labels=labels[rows])
        out.losses[row].backward()
        return out.losses[row].detach(), out.logits[row].detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    beside_loss, beside_logits, beside_grads = train(slice(None), -1)
    alone_loss, alone_logits, alone_grads = train(slice(1, 2), 0)
    assert images == [6, 2]  # alone, the row's absent camera leaves the prefix
    assert alone_logits.shape == beside_logits.shape == (input_ids.shape[1], model.config.text_config.vocab_size)
    valid = attention_mask[1]
    torch.testing.assert_close(alone_logits[valid], beside_logits[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone_loss, beside_loss, atol=1e-6, rtol=1e-5)
    assert alone_grads.keys() == beside_grads.keys() and "vision_tower.embeddings.patch_embedding.weight" in alone_grads
    for name in alone_grads:
        torch.testing.assert_close(alone_grads[name], beside_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_a_training_pass_without_logits_leaves_out_unread_slots_and_trains_the_same():
    """output_logits=False (what `PiCollator` asks for) computes the head only where a target is read and leaves
    out the trailing slots no row fills or labels: the same loss and gradients, a shorter sequence."""
    model = _tiny_fast().train()
    pixel_values, pixel_attention_mask, input_ids, attention_mask = _tiny_prompt(model)
    input_ids, attention_mask = F.pad(input_ids, (0, 4)), F.pad(attention_mask, (0, 4))  # 4 slots no row fills
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 2:] = 1
    labels = input_ids.masked_fill((token_type_ids == 0) | ~attention_mask, -100)
    lengths = []
    model.language_model.layers[0].input_layernorm.register_forward_hook(lambda m, args, out: lengths.append(out.shape[1]))

    def train(**options):
        model.zero_grad()
        out = model(pixel_values, pixel_attention_mask, input_ids, attention_mask, token_type_ids=token_type_ids,
                    labels=labels, **options)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, full_grads = train()
    trimmed, trimmed_grads = train(output_logits=False)
    images = model.config.num_image_tokens * pixel_attention_mask.shape[1]
    assert lengths == [images + input_ids.shape[1], images + input_ids.shape[1] - 4]
    assert full.logits.shape[1] == input_ids.shape[1] and trimmed.logits is None
    torch.testing.assert_close(trimmed.losses, full.losses, atol=1e-6, rtol=1e-5)
    assert trimmed_grads.keys() == full_grads.keys() and "language_model.embed_tokens.weight" in full_grads
    for name in full_grads:
        torch.testing.assert_close(trimmed_grads[name], full_grads[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("change, message", [
    (lambda kw: kw.update(input_ids=kw["input_ids"] + 5000), "input_ids"),
    (lambda kw: kw.update(labels=kw["labels"][:, :3]), "labels"),
    (lambda kw: kw.update(labels=kw["labels"].masked_fill(kw["labels"] > 0, 99999)), "labels"),
    (lambda kw: kw.update(token_type_ids=kw["token_type_ids"] + 2), "token_type_ids"),
    (lambda kw: kw.update(actions=torch.zeros(2, 32, 32)), "labels"),
    (lambda kw: kw.update(labels=None, output_logits=False), "output_logits"),
])
def test_bad_training_input_raises_a_value_error(change, message):
    model = _tiny_fast()
    pixel_values, pixel_attention_mask, input_ids, attention_mask = _tiny_prompt(model)
    kwargs = {"pixel_values": pixel_values, "pixel_attention_mask": pixel_attention_mask, "input_ids": input_ids,
              "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids), "labels": input_ids.clone()}
    change(kwargs)
    with pytest.raises(ValueError, match=message):
        model(**kwargs)


@pytest.mark.parametrize("options, message", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -1.0}, "temperature"),
    ({"allowed_token_ids": [5000]}, "allowed_token_ids"),
    ({"max_new_tokens": 2.5}, "max_new_tokens must be a whole number"),
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"allowed_token_ids": [[5, 6]]}, r"allowed_token_ids must be a non-empty 1-D set of integer ids, got torch.int64 \[1, 2\]"),
    ({"allowed_token_ids": 5}, "allowed_token_ids must be a non-empty 1-D set"),
    ({"allowed_token_ids": [5.7, 6.2]}, "allowed_token_ids must be a non-empty 1-D set of integer ids, got torch.float32"),
])
def test_bad_decoding_options_raise_a_value_error(options, message):
    model = _tiny_fast()
    with pytest.raises(ValueError, match=message):
        model.generate_actions(*_tiny_prompt(model), **options)


def test_flow_options_are_refused_by_fast_and_fast_options_by_flow():
    fast = _tiny_fast()
    with pytest.raises(TypeError):
        fast.generate_actions(*_tiny_prompt(fast), num_steps=3)
    flow = PiForActionGeneration(tiny_config("pi05")).eval()
    inputs = random_inputs(flow.config)
    prompt = _tiny_prompt(flow)
    with pytest.raises(ValueError, match="labels"):
        flow(*prompt, actions=inputs["actions"], labels=inputs["input_ids"])
    with pytest.raises(TypeError):
        flow.generate_actions(*prompt, max_new_tokens=3)


def test_a_training_row_without_any_target_is_refused():
    model = noisy_tiny_model("pi0_fast")
    inputs = random_inputs(model.config)
    labels = inputs["input_ids"].clone()
    labels[1] = -100
    with pytest.raises(ValueError, match=r"labels of example\(s\) \[1\] hold no target"):
        model(*model_args(inputs), token_type_ids=torch.ones_like(labels), labels=labels)

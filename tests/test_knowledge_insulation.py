"""Knowledge insulation (π0.5): the backbone learns the chunk's FAST tokens, the expert learns the flow through a
stop-gradient, and neither loss reaches the other's weights."""

import numpy as np
import pytest
import torch

from conftest import FIXTURES, noisy_tiny_model, random_inputs
from modeling_pi import PiForActionGeneration

BACKBONE = ("vision_tower", "multi_modal_projector", "language_model")
POSTFIX = 3  # FAST tokens written after each tiny prompt in these tests


def _case(seed: int = 0):
    """A tiny π0.5 trained with knowledge insulation, and a batch whose prompts end with FAST targets."""
    model = noisy_tiny_model("pi05", knowledge_insulation=True).train()
    inputs = random_inputs(model.config, seed=seed)
    real = inputs["attention_mask"].sum(dim=1)
    width = inputs["input_ids"].shape[1] + POSTFIX  # room after the longest prompt
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.randint(2, 1000, (len(real), POSTFIX))], dim=1)
    slots = torch.arange(width)
    postfix = (slots >= real[:, None]) & (slots < real[:, None] + POSTFIX)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.zeros(len(real), POSTFIX, dtype=torch.bool)], 1)
    inputs["attention_mask"] = inputs["attention_mask"] | postfix
    inputs["token_type_ids"] = postfix.long()
    inputs["labels"] = inputs["input_ids"].masked_fill(~postfix, -100)
    inputs["timestep"] = torch.tensor([0.3, 0.8])
    inputs.pop("state", None)  # π0.5 reads its state in the prompt
    return model, inputs


def _gradients(model, loss) -> dict[str, torch.Tensor]:
    names, parameters = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    return {name: grad for name, grad in zip(names, grads)}


def test_each_loss_trains_only_its_own_weights():
    model, inputs = _case()
    out = model(**inputs)
    assert torch.equal(out.loss, out.flow_loss + out.fast_loss)
    total, fast, flow = (_gradients(model, loss) for loss in (out.loss, out.fast_loss, out.flow_loss))
    for name in total:
        backbone = name.startswith(BACKBONE)
        alone = fast[name] if backbone else flow[name]
        other = flow[name] if backbone else fast[name]
        assert other is None or not other.any(), f"{name} gets a gradient from the other loss"
        if alone is None:
            assert total[name] is None or not total[name].any(), name
        else:
            torch.testing.assert_close(total[name], alone, atol=0, rtol=0, msg=name)
    assert fast["language_model.layers.0.mlp.up_proj.weight"].abs().sum() > 0  # both losses do train something
    assert flow["action_expert.layers.0.mlp.up_proj.weight"].abs().sum() > 0


def test_the_expert_reads_no_fast_token_and_sees_what_it_sees_when_sampling():
    """Changing the FAST tokens (inputs and targets) leaves the flow untouched; and at flow time 1 the training
    velocity is the one the sampler's single Euler step takes, which runs without any FAST token."""
    model, inputs = _case()
    with torch.no_grad():
        out = model(**inputs)
        changed = dict(inputs)
        changed["input_ids"] = torch.where(inputs["token_type_ids"].bool(), (inputs["input_ids"] + 7) % 1000 + 2,
                                           inputs["input_ids"])
        changed["labels"] = changed["input_ids"].masked_fill(~inputs["token_type_ids"].bool(), -100)
        other = model(**changed)
        assert torch.equal(other.velocity, out.velocity) and not torch.equal(other.fast_loss, out.fast_loss)

        model.eval()
        at_noise = model(**{**inputs, "timestep": torch.ones(2)}).velocity
        prompt = inputs["attention_mask"] & ~inputs["token_type_ids"].bool()
        sampled = inputs["noise"] - model.generate_actions(inputs["pixel_values"], inputs["pixel_attention_mask"],
                                                           inputs["input_ids"], prompt, noise=inputs["noise"], num_steps=1)
        torch.testing.assert_close(sampled, at_noise, atol=1e-5, rtol=0)


def test_the_mode_needs_its_targets_and_belongs_to_pi05(tmp_path):
    model, inputs = _case()
    with pytest.raises(ValueError, match="FAST tokens"):
        model(**{k: v for k, v in inputs.items() if k not in ("labels", "token_type_ids")})
    plain = noisy_tiny_model("pi05")
    with pytest.raises(ValueError, match="knowledge insulation"):
        plain(**inputs)
    with pytest.raises(ValueError, match="π0.5"):
        noisy_tiny_model("pi0", knowledge_insulation=True)
    # a model trained this way saves, loads and samples like any π0.5
    model.eval().save_pretrained(tmp_path)
    loaded = PiForActionGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.knowledge_insulation
    prompt = inputs["attention_mask"] & ~inputs["token_type_ids"].bool()
    sample = [each.generate_actions(inputs["pixel_values"], inputs["pixel_attention_mask"], inputs["input_ids"], prompt,
                                    noise=inputs["noise"], num_steps=2) for each in (model, loaded)]
    assert torch.equal(*sample)


def test_a_pi05_processor_with_a_fast_tokenizer_writes_the_targets_after_action():
    from processing_pi import FastActionTokenizer, PiImageProcessor, PiProcessor, tokenizer_from_sentencepiece

    processor = PiProcessor(PiImageProcessor(size=28), tokenizer_from_sentencepiece(FIXTURES / "processor" / "tokenizer.model"),
                            variant="pi05", image_keys=["base_0_rgb"], max_token_len=120, action_horizon=10,
                            action_tokenizer=FastActionTokenizer.from_pretrained(FIXTURES / "processor" / "fast_tokenizer"),
                            knowledge_insulation=True)
    rng = np.random.default_rng(0)
    state, chunk = rng.uniform(-1, 1, (2, 7)), rng.uniform(-1, 1, (2, 10, 7))
    images = {"base_0_rgb": [np.zeros((32, 32, 3), np.uint8)] * 2}
    prompts = ["pick up the cup", "open the drawer"]
    batch = processor(images=images, prompt=prompts, state=state, actions=chunk)
    plain = processor(images=images, prompt=prompts, state=state)
    for row in range(2):
        prompt = plain["input_ids"][row][plain["attention_mask"][row]].tolist()
        ids = batch["input_ids"][row][batch["attention_mask"][row]].tolist()
        roles = batch["token_type_ids"][row][batch["attention_mask"][row]].tolist()
        assert ids[: len(prompt)] == prompt and roles == [0] * len(prompt) + [1] * (len(ids) - len(prompt))
        assert len(ids) > len(prompt) + 2 and ids[-1] == processor.tokenizer.eos_token_id
        assert torch.equal(batch["labels"][row] != -100, batch["token_type_ids"][row].bool())
    assert batch["actions"].shape == (2, 10, 32)
    with pytest.raises(ValueError, match="discrete_state_input cannot be False"):
        processor.replace(discrete_state_input=False)

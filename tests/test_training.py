"""Fine-tuning with transformers.Trainer and the reference's LoRA presets (PEFT); padded steps leave the loss."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModel, Trainer, TrainingArguments

import modeling_pi  # noqa: F401
from conftest import MODEL_INPUTS, flow_state, model_args, random_inputs, tiny_config
from modeling_pi import PiForActionGeneration
from training_pi import apply_lora, lora_config, set_full_finetuning


class _Examples(torch.utils.data.Dataset):
    """Model inputs one example at a time, as a collator would produce them."""

    def __init__(self, inputs: dict):
        self.inputs = inputs

    def __len__(self):
        return len(self.inputs["pixel_values"])

    def __getitem__(self, i):
        return {key: value[i] for key, value in self.inputs.items()}


def _flow_dataset(config, size=16):
    inputs = random_inputs(config, batch=size, seed=1)
    del inputs["noise"]
    inputs["actions"] = torch.linspace(-1, 1, config.action_horizon)[None, :, None].expand(size, -1, config.action_dim).clone()
    return inputs


def test_padded_action_steps_are_left_out_of_the_loss():
    torch.manual_seed(0)
    model = PiForActionGeneration(tiny_config("pi05")).eval()
    inputs = random_inputs(model.config)
    inputs["timestep"] = torch.tensor([0.4, 0.9])
    pad = torch.zeros(2, model.config.action_horizon, dtype=torch.bool)
    pad[0, 5:] = True
    with torch.no_grad():
        full = model(**inputs)
        masked = model(**inputs, action_is_pad=pad)
    torch.testing.assert_close(masked.losses, full.losses)  # per-step losses are reported for every step
    torch.testing.assert_close(masked.loss, full.losses[~pad].mean())
    with pytest.raises(ValueError, match="action_is_pad"):
        model(**inputs, action_is_pad=pad[:, :3])


@pytest.mark.parametrize("variant", ["pi0", "pi05", "pi0_fast"])
def test_lora_presets_match_the_reference(variant):
    model = PiForActionGeneration(tiny_config(variant))
    peft_model = apply_lora(model)
    adapters = {n: p.shape for n, p in peft_model.named_parameters() if "lora_A" in n}
    assert any("language_model" in n and shape[0] == 16 for n, shape in adapters.items())
    assert all(shape[0] == (32 if "action_expert" in n else 16) for n, shape in adapters.items())
    assert (variant == "pi0_fast") != any("action_expert" in n for n in adapters)
    assert sum("mlp.down_proj" in n for n in adapters) and sum("self_attn.o_proj" in n for n in adapters)
    frozen_gemma = [n for n, p in peft_model.named_parameters()
                    if ("language_model" in n or "action_expert" in n) and "lora_" not in n and p.requires_grad]
    assert frozen_gemma == []  # the Gemma weights under adapters do not train...
    trains = {n.split(".")[2] for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n}
    outside_gemma = {n.split(".")[0] for n, _ in model.named_parameters()} - {"language_model", "action_expert"}
    assert trains == outside_gemma  # ...the rest does (vision, projector, every flow projection), as in the reference
    frozen_vision = lora_config(model, freeze_vision=True).modules_to_save
    assert "vision_tower" not in frozen_vision and "multi_modal_projector" not in frozen_vision
    with pytest.raises(ValueError, match="preset"):
        lora_config(model, presets=("gemma_7b_lora",))


def test_full_finetuning_can_freeze_the_vision_tower():
    model = set_full_finetuning(PiForActionGeneration(tiny_config("pi0")), freeze_vision=True)
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.action_expert.parameters())


@pytest.mark.parametrize("variant, insulated", [("pi0", False), ("pi05", False), ("pi05", True), ("pi0_fast", False)])
def test_full_finetuning_freezes_exactly_the_weights_no_loss_reaches(variant, insulated):
    torch.manual_seed(0)
    model = PiForActionGeneration(tiny_config(variant, knowledge_insulation=insulated))
    reached = _gradient_reached(model, variant, insulated)
    set_full_finetuning(model)
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    assert frozen == {name for name, _ in model.named_parameters()} - reached
    assert bool(frozen) == (variant != "pi0_fast" and not insulated)


def _gradient_reached(model, variant: str, insulated: bool) -> set[str]:
    """The parameters one training step of `model` gives a gradient to."""
    inputs = random_inputs(model.config)
    if variant == "pi0_fast" or insulated:
        inputs["token_type_ids"] = (torch.arange(inputs["input_ids"].shape[1]) >= 4).long().expand_as(inputs["input_ids"])
        inputs["labels"] = torch.where(inputs["token_type_ids"].bool(), inputs["input_ids"], -100)
    flow = {**flow_state(model.config, inputs), "actions": inputs["actions"]} if variant != "pi0_fast" else {}
    extra = {key: inputs[key] for key in ("token_type_ids", "labels") if key in inputs}
    model(*model_args(inputs), **flow, **extra).loss.backward()
    return {name for name, param in model.named_parameters() if param.grad is not None}


def _base_model(seed=0):
    torch.manual_seed(seed)
    return PiForActionGeneration(tiny_config("pi05"))


@torch.no_grad()
def _velocity(model, inputs):
    model.eval()
    fixed = {**inputs, "noise": torch.ones_like(inputs["actions"]), "timestep": torch.full((len(inputs["actions"]),), 0.5)}
    return model(**fixed).velocity


def test_trainer_lora_fine_tuning_lowers_the_loss_and_saves_adapters_and_merged_models(tmp_path):
    peft_model = apply_lora(_base_model())
    data = _flow_dataset(peft_model.config)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=120, per_device_train_batch_size=8,
                             learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=3, logging_steps=1,
                             save_strategy="no", report_to=[], use_cpu=True, seed=0, activation_checkpointing=True,
                             disable_tqdm=True)
    trainer = Trainer(model=peft_model, args=args, train_dataset=_Examples(data))
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 120
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)

    probe = {key: value[:2] for key, value in data.items()}
    trained = _velocity(peft_model, probe)
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(_base_model(), tmp_path / "adapter")
    torch.testing.assert_close(_velocity(reloaded, probe), trained)

    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    loaded = AutoModel.from_pretrained(tmp_path / "merged")
    assert isinstance(loaded, PiForActionGeneration)
    torch.testing.assert_close(_velocity(loaded, probe), trained, atol=1e-5, rtol=1e-4)


def test_trainer_evaluates_a_flow_model_with_actions_as_its_labels(tmp_path):
    """Trainer computes an eval loss only for batches holding its `label_names`; a flow batch's targets are
    `actions` (`labels` is π0-FAST's), as docs/training.md says to set."""
    model = _base_model()
    data = _flow_dataset(model.config, size=4)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, label_names=["actions"], report_to=[],
                             use_cpu=True, disable_tqdm=True)
    metrics = Trainer(model=model, args=args, eval_dataset=_Examples(data)).evaluate()
    assert metrics["eval_loss"] > 0


def test_trainer_fully_fine_tunes_pi0_fast_on_token_targets(tmp_path):
    torch.manual_seed(0)
    model = PiForActionGeneration(tiny_config("pi0_fast"))
    inputs = random_inputs(model.config, batch=8, seed=2)
    data = {key: inputs[key] for key in MODEL_INPUTS}
    data["token_type_ids"] = torch.zeros_like(data["input_ids"])
    data["token_type_ids"][:, 3:] = 1
    data["input_ids"][:, 3:] = 7  # a postfix the model can learn: the same token again and again
    data["attention_mask"] = torch.ones_like(data["attention_mask"])
    data["labels"] = data["input_ids"].masked_fill(data["token_type_ids"] == 0, -100)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=60, per_device_train_batch_size=8, learning_rate=3e-3,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = Trainer(model=set_full_finetuning(model), args=args, train_dataset=_Examples(data))
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < 0.5 * losses[0], losses

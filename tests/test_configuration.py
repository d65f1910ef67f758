"""PiConfig: full-size defaults, rejection of configurations that cannot run, round trips."""

import json

import pytest
import torch
from transformers import AutoConfig

from conftest import OPENPI, tiny_config
from modeling_pi import PiConfig, PiForActionGeneration


@pytest.mark.parametrize("variant", ["pi0", "pi05", "pi0_fast"])
def test_full_size_defaults_have_the_released_parameter_count(variant):
    """Built on the meta device: exactly the reference's count, so no unused parameter (no expert embedding)."""
    with torch.device("meta"):
        model = PiForActionGeneration(PiConfig(variant=variant))
    expected = json.loads((OPENPI / "full_size_param_shapes" / f"{variant}.json").read_text())["total_params"]
    assert sum(p.numel() for p in model.parameters()) == expected


def test_defaults_describe_the_released_models():
    config = PiConfig()
    assert (config.variant, config.action_dim, config.action_horizon, config.max_token_len) == ("pi0", 32, 50, 48)
    assert config.image_keys == ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"]
    assert (config.text_config.hidden_size, config.expert_config.hidden_size, config.vision_config.hidden_size) == (2048, 1024, 1152)
    assert config.num_image_tokens == 256 and config.num_inference_steps == 10
    assert PiConfig(variant="pi05").max_token_len == 200 and PiConfig(variant="pi05").use_adarms
    fast = PiConfig(variant="pi0_fast")
    assert fast.expert_config is None and not fast.is_flow and (fast.action_horizon, fast.max_token_len) == (32, 250)


@pytest.mark.parametrize("field, value, message", [
    ("num_hidden_layers", 3, "num_hidden_layers"),
    ("num_attention_heads", 2, "num_attention_heads"),
    ("num_key_value_heads", 2, "num_key_value_heads"),
    ("head_dim", 8, "head_dim"),
    ("hidden_size", 33, "even"),
])
def test_expert_that_cannot_share_attention_is_rejected(field, value, message):
    expert = tiny_config().expert_config.to_dict() | {field: value}
    with pytest.raises(ValueError, match=message):
        tiny_config(expert_config=expert)


@pytest.mark.parametrize("overrides, message", [
    ({"variant": "pi1"}, "Unknown π variant"),
    ({"variant": "pi0_fast", "expert_config": {"model_type": "gemma"}}, "no action expert"),
    ({"action_horizon": 0}, "action_horizon"),
    ({"image_keys": ["base_0_rgb", "base_0_rgb"]}, "image_keys"),
    ({"time_beta_alpha": 0.0}, "Beta parameters"),  # torch's Beta would fail at the first training step
    ({"time_scale": -1.0}, "time_scale must be positive"),
    ({"min_period": 5.0, "max_period": 4.0}, "0 < min_period < max_period"),
])
def test_other_impossible_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


@pytest.mark.parametrize("overrides, message", [
    ({"action_horizon": 0}, "action_horizon must be positive"),
    ({"rtc_max_delay": 50}, "rtc_max_delay is 0 \\(none\\) or a clean action prefix"),
    ({"knowledge_insulation": True}, "knowledge_insulation is a π0.5 training mode"),
])
def test_values_given_to_from_pretrained_are_checked_as_at_construction(tmp_path, overrides, message):
    # transformers sets them after the config is built: the model checks them again
    PiForActionGeneration(tiny_config("pi0")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        PiForActionGeneration.from_pretrained(tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):  # the config alone, as AutoConfig loads it
        AutoConfig.from_pretrained(tmp_path, **overrides)
    config = tiny_config("pi0")
    for name, value in overrides.items():
        setattr(config, name, value)
    with pytest.raises(Exception, match=message):  # never written: it would not load
        config.save_pretrained(tmp_path / "config")
    assert not (tmp_path / "config" / "config.json").exists()


def test_a_clean_prefix_set_after_loading_is_checked_before_training_on_it():
    from conftest import random_inputs

    model = PiForActionGeneration(tiny_config("pi05")).train()
    model.config.rtc_max_delay = 100  # every step a clean prefix: a loss of 0
    with pytest.raises(ValueError, match="rtc_max_delay"):
        model(**{name: value for name, value in random_inputs(model.config).items() if name != "state"})


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config("pi05", num_inference_steps=5, image_keys=["top", "wrist"])
    config.save_pretrained(tmp_path)
    loaded = PiConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.expert_config.hidden_size == 32 and loaded.image_keys == ["top", "wrist"]

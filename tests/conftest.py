"""Shared test helpers: the reference fixtures (../shared/fixtures), converted fixture models, tiny configs."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from configuration_pi import PiConfig
from conversion.convert_openpi import convert_openpi
from conversion.hf_folder import build_processor
from processing_pi import NormStats

# ../shared/fixtures beside the clone; PI_FIXTURES names another copy (the GPU check carries one along).
FIXTURES = Path(os.environ.get("PI_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
OPENPI = FIXTURES / "openpi"
CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
PROCESSOR = FIXTURES / "processor"
ROBOT_DIM = 7  # the size of the fixture processor's norm stats

if not OPENPI.is_dir():
    raise RuntimeError(f"The reference fixtures are expected at {FIXTURES} (../shared/fixtures beside the clone).")


def load_fixture_io(variant: str) -> dict[str, torch.Tensor]:
    """The fixture's inputs as model inputs (images as the reference feeds them: x/255*2-1) plus `expected.*`."""
    io = load_file(OPENPI / variant / "io.safetensors")
    images = torch.stack([io[f"image.{cam}"] for cam in CAMERAS], dim=1)  # [B, C, H, W, 3] uint8
    return {
        "pixel_values": images.permute(0, 1, 4, 2, 3).float() / 255 * 2 - 1,
        "pixel_attention_mask": torch.stack([io[f"image_mask.{cam}"] for cam in CAMERAS], dim=1),
        "input_ids": io["tokenized_prompt"].long(),
        "attention_mask": io["tokenized_prompt_mask"],
        **{key: value for key, value in io.items() if not key.startswith(("image", "tokenized_prompt"))},
    }


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Each test compiles from scratch: torch.compile counts the recompilations of a function over the whole process
    (a new model is a new guard), and past its limit (8) a `fullgraph=True` compilation fails."""
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """variant -> folder holding the fixture checkpoint converted by `convert_openpi` (once per session)."""
    folders = {}

    def get(variant: str) -> Path:
        if variant not in folders:
            sizes = json.loads((OPENPI / variant / "fixture.json").read_text())  # not in the weights: the caller's
            folders[variant] = convert_openpi(
                OPENPI / variant, variant, tmp_path_factory.mktemp("converted") / variant, progress=False,
                action_horizon=sizes["action_horizon"], max_token_len=sizes["max_token_len"],
            )
        return folders[variant]

    return get


@pytest.fixture(scope="session")
def policy_folder(converted, tmp_path_factory):
    """variant -> a converted fixture checkpoint with its processor (fixture tokenizer and norm stats) beside it."""
    folders = {}

    def get(variant: str) -> str:
        if variant not in folders:
            folder = tmp_path_factory.mktemp("policy") / variant
            shutil.copytree(converted(variant), folder)
            fast = PROCESSOR / "fast_tokenizer" if variant == "pi0_fast" else None
            stats = NormStats.from_json(PROCESSOR / "norm_stats.json")
            build_processor(PiConfig.from_pretrained(folder), PROCESSOR / "tokenizer.model", fast, stats).save_pretrained(folder)
            folders[variant] = str(folder)
        return folders[variant]

    return get


MODEL_INPUTS = ("pixel_values", "pixel_attention_mask", "input_ids", "attention_mask")


def model_args(inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The model's positional inputs, in order, from a dict of inputs (fixture or `random_inputs`)."""
    return [inputs[name] for name in MODEL_INPUTS]


def tiny_config(variant: str = "pi0", **overrides) -> PiConfig:
    """A small π config (the fixtures' architecture) for tests that need a model but not the reference weights."""
    text = {
        "model_type": "gemma",
        "vocab_size": 1024,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 16,
    }
    expert = {**text, "vocab_size": 1, "hidden_size": 32, "intermediate_size": 64, "pad_token_id": None,
              "bos_token_id": None, "eos_token_id": None}
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
        "vision_use_head": False,
    }
    kwargs = {"variant": variant, "text_config": text, "vision_config": vision, "action_horizon": 8, "max_token_len": 12}
    if variant != "pi0_fast":
        kwargs["expert_config"] = expert
    kwargs.update(overrides)
    return PiConfig(**kwargs)


def random_inputs(config: PiConfig, batch: int = 2, prompt_len: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random but valid model inputs for `config`: last example has its last camera masked and a shorter prompt.
    π0.5 gets no `state` (it reads the state in its prompt)."""
    gen = torch.Generator().manual_seed(seed)
    cameras, size = len(config.image_keys), config.vision_config.image_size
    pixel_attention_mask = torch.ones(batch, cameras, dtype=torch.bool)
    pixel_attention_mask[-1, -1] = False
    attention_mask = torch.ones(batch, prompt_len, dtype=torch.bool)
    attention_mask[-1, prompt_len // 2 :] = False
    chunk = (batch, config.action_horizon, config.action_dim)
    inputs = {
        "pixel_values": torch.rand(batch, cameras, 3, size, size, generator=gen) * 2 - 1,
        "pixel_attention_mask": pixel_attention_mask,
        "input_ids": torch.randint(0, config.text_config.vocab_size, (batch, prompt_len), generator=gen),
        "attention_mask": attention_mask,
        "state": torch.randn(batch, config.action_dim, generator=gen),
        "actions": torch.randn(chunk, generator=gen),
        "noise": torch.randn(chunk, generator=gen),
    }
    if config.variant == "pi05":
        del inputs["state"]
    return inputs


def flow_state(config: PiConfig, inputs: dict) -> dict:
    """The `state` keyword of a flow model's call: π0 reads it as a token, π0.5 in its prompt (none given)."""
    return {"state": inputs["state"]} if config.variant == "pi0" else {}


def noisy_tiny_model(variant: str = "pi0", seed: int = 0, **overrides):
    """A tiny model in which, as in the fixtures, every parameter carries noise (no closed adaRMS gate, no
    unit norm)."""
    from modeling_pi import PiForActionGeneration

    torch.manual_seed(seed)
    model = PiForActionGeneration(tiny_config(variant, **overrides)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param), alpha=0.05)
    return model

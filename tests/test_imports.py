"""Imports from LeRobot's and transformers' own π checkpoints (`pi convert lerobot`, `pi convert transformers-pi0`,
`pi convert transformers-pi05`).

transformers' PI0 and PI05 are built here with random weights and must be matched numerically. LeRobot is not
installed, so its folders are written by `lerobot_folder` from the reference fixtures, in the layout
LeRobot saves: every key under `model.` (the policy wrapper), PaliGemma under
`paligemma_with_expert.paligemma.model.` with SigLIP one `vision_model.` level down and the projector
as `multi_modal_projector.linear`, the tied embedding stored only as `paligemma.lm_head`, the expert
under `paligemma_with_expert.gemma_expert.model.` plus its unused `lm_head`, π0.5 adaRMS norms as
`*norm.dense`, and the statistics in the normaliser step's safetensors named in `policy_preprocessor.json`.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn.utils.rnn import pad_sequence
from transformers import (AutoModel, AutoProcessor, PI05Config, PI05ForConditionalGeneration, PI05Processor, PI0Config,
                          PI0ForConditionalGeneration)

import modeling_pi  # noqa: F401
import pi_cli
from conftest import CAMERAS, FIXTURES, load_fixture_io
from conversion.convert_lerobot import convert_state_dict, lerobot_config, rename_state_dict
from conversion.hf_folder import ConversionError
from modeling_pi import PiConfig
from processing_pi.prompts import tokenize_prompt, tokenizer_from_sentencepiece

TOKENIZER = FIXTURES / "processor" / "tokenizer.model"
LEROBOT_PREFIXES = [  # ours -> LeRobot's, first match wins
    ("language_model.embed_tokens.weight", "paligemma_with_expert.paligemma.lm_head.weight"),
    ("vision_tower.", "paligemma_with_expert.paligemma.model.vision_tower.vision_model."),
    ("multi_modal_projector.", "paligemma_with_expert.paligemma.model.multi_modal_projector.linear."),
    ("language_model.", "paligemma_with_expert.paligemma.model.language_model."),
    ("action_expert.", "paligemma_with_expert.gemma_expert.model."),
]
LEROBOT_TYPES = {"pi0": "pi0", "pi05": "pi05", "pi0_fast": "pi0_fast"}


def lerobot_name(name: str) -> str:
    for ours, theirs in LEROBOT_PREFIXES:
        if name.startswith(ours):
            name = theirs + name.removeprefix(ours)
            break
    return "model." + name.replace(".modulation.", ".dense.")


def lerobot_folder(root, converted_folder, config: PiConfig, norm_map: dict | None = None):
    """A LeRobot policy folder holding the weights of `converted_folder` (an openpi fixture converted by us)."""
    root.mkdir()
    weights = load_file(converted_folder / "model.safetensors")
    tensors = {lerobot_name(name): tensor for name, tensor in weights.items()}
    if config.is_flow:
        tensors["model.paligemma_with_expert.gemma_expert.lm_head.weight"] = torch.randn(7, config.expert_config.hidden_size)
    save_file(tensors, root / "model.safetensors")
    features = {f"observation.images.{camera}": {"type": "VISUAL", "shape": [3, 224, 224]} for camera in CAMERAS}
    settings = {
        "type": LEROBOT_TYPES[config.variant], "input_features": {**features, "observation.state": {"type": "STATE", "shape": [32]}},
        "output_features": {"action": {"type": "ACTION", "shape": [32]}}, "paligemma_variant": "fixture",
        "action_expert_variant": "fixture", "chunk_size": config.action_horizon, "max_state_dim": 32, "max_action_dim": 32,
        "tokenizer_max_length": config.max_token_len, "num_inference_steps": 10, "image_resolution": [224, 224],
    }
    (root / "config.json").write_text(json.dumps(settings))
    if norm_map is not None:
        stats = {f"{key}.{name}": torch.linspace(-1, 1, 6) * (i + 1) + (3 if name in ("std", "q99") else 0)
                 for key in ("observation.state", "action") for i, name in enumerate(("mean", "std", "q01", "q99"))}
        save_file(stats, root / "policy_preprocessor_step_5_normalizer_processor.safetensors")
        steps = [{"registry_name": "tokenizer_processor", "config": {}},
                 {"registry_name": "normalizer_processor", "config": {"eps": 1e-8, "norm_map": norm_map},
                  "state_file": "policy_preprocessor_step_5_normalizer_processor.safetensors"}]
        (root / "policy_preprocessor.json").write_text(json.dumps({"name": "policy_preprocessor", "steps": steps}))
    return root


def _pi(capsys, *args) -> tuple[int, str]:
    code = pi_cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("variant", ["pi0", "pi05", "pi0_fast"])
def test_lerobot_folder_converts_to_the_same_weights_as_the_openpi_checkpoint(tmp_path, capsys, converted, variant):
    config = PiConfig.from_pretrained(converted(variant))
    source = lerobot_folder(tmp_path / "lerobot", converted(variant), config)
    code, stderr = _pi(capsys, "convert", "lerobot", "--checkpoint", source, "--output", tmp_path / "out",
                       "--config", converted(variant) / "config.json")
    assert code == 0, stderr
    ours, reference = load_file(tmp_path / "out" / "model.safetensors"), load_file(converted(variant) / "model.safetensors")
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[name], reference[name]) for name in ours)
    model = AutoModel.from_pretrained(tmp_path / "out")
    assert model.config.variant == variant and model.config.image_keys == list(CAMERAS)
    assert model.config.action_horizon == config.action_horizon and model.config.max_token_len == config.max_token_len
    assert "LeRobot checkpoint" in (tmp_path / "out" / "README.md").read_text()


@torch.no_grad()
def test_lerobot_pi05_reproduces_the_reference_samples(tmp_path, capsys, converted):
    config = PiConfig.from_pretrained(converted("pi05"))
    source = lerobot_folder(tmp_path / "lerobot", converted("pi05"), config)
    assert _pi(capsys, "convert", "lerobot", "--checkpoint", source, "--output", tmp_path / "out",
               "--config", converted("pi05") / "config.json")[0] == 0
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    io = load_fixture_io("pi05")
    actions = model.generate_actions(io["pixel_values"], io["pixel_attention_mask"], io["input_ids"], io["attention_mask"],
                                     noise=io["noise"], num_steps=10)
    torch.testing.assert_close(actions, io["expected.sample_actions_10_steps"], atol=5e-4, rtol=0)


@pytest.mark.parametrize("norm_map, mode", [({"STATE": "MEAN_STD", "ACTION": "MEAN_STD"}, "zscore"),
                                            ({"STATE": "QUANTILES", "ACTION": "QUANTILES"}, "quantile")])
def test_lerobot_normaliser_statistics_become_the_processor_statistics(tmp_path, capsys, converted, norm_map, mode):
    config = PiConfig.from_pretrained(converted("pi0"))
    source = lerobot_folder(tmp_path / "lerobot", converted("pi0"), config, norm_map)
    code, stderr = _pi(capsys, "convert", "lerobot", "--checkpoint", source, "--output", tmp_path / "out",
                       "--config", converted("pi0") / "config.json", "--tokenizer", TOKENIZER)
    assert code == 0, stderr
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    stats = load_file(source / "policy_preprocessor_step_5_normalizer_processor.safetensors")
    assert processor.norm_mode == mode and processor.image_keys == list(CAMERAS)
    for theirs, ours in (("observation.state", "state"), ("action", "actions")):
        for name in ("mean", "std", "q01", "q99"):
            assert getattr(getattr(processor.norm_stats, ours), name).tolist() == pytest.approx(stats[f"{theirs}.{name}"].tolist())
    assert "statistics for: state, actions" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("variant", ["pi0", "pi05", "pi0_fast"])
def test_full_size_lerobot_checkpoints_map_completely_from_their_shapes(variant):
    """On meta tensors: the released sizes (SigLIP So400m, Gemma 2B, the 300M expert) read off the shapes."""
    config = PiConfig(variant=variant, **({"skip_position_after_prefix": False} if variant == "pi0_fast" else {}))
    settings = {"type": LEROBOT_TYPES[variant], "chunk_size": config.action_horizon, "tokenizer_max_length": config.max_token_len}
    with torch.device("meta"):
        model = modeling_pi.PiForActionGeneration(config)
    tensors = {lerobot_name(name): tensor for name, tensor in model.state_dict().items()}
    shapes = {name: tuple(t.shape) for name, t in rename_state_dict(tensors, variant)[0].items()}
    assert lerobot_config(settings, shapes).to_diff_dict() == config.to_diff_dict()
    state_dict = convert_state_dict(tensors, config)  # raises on anything missing, unknown or mis-shaped
    assert sum(t.numel() for t in state_dict.values()) == model.num_parameters()


def test_lerobot_errors_name_the_problem(tmp_path, capsys, converted):
    config = PiConfig.from_pretrained(converted("pi0"))
    source = lerobot_folder(tmp_path / "lerobot", converted("pi0"), config)
    tensors = load_file(source / "model.safetensors")
    extra = {**tensors, "model.some_new_head.weight": torch.zeros(2)}
    with pytest.raises(ConversionError, match="some_new_head"):
        convert_state_dict(extra, config)
    missing = {k: v for k, v in tensors.items() if "action_out_proj" not in k}
    with pytest.raises(ConversionError, match="action_out_proj"):
        convert_state_dict(missing, config)
    both = {**tensors, "action_out_proj.weight": tensors["model.action_out_proj.weight"] + 1}  # with and without `model.`
    with pytest.raises(ConversionError, match="different values"):
        convert_state_dict(both, config)
    settings = json.loads((source / "config.json").read_text())
    with pytest.raises(ConversionError, match="max_state_dim 8 and max_action_dim 32"):
        lerobot_config({**settings, "max_state_dim": 8}, {}, config)


def _tiny_transformers(config_class=PI0Config, model_class=PI0ForConditionalGeneration):
    """transformers' PI0 (or PI05) at test size, every weight random."""
    text = {"model_type": "gemma", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 1024}
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14, "vision_use_head": False}
    dit = {"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 1, "head_dim": 16}
    config = config_class(vlm_config={"text_config": text, "vision_config": vision, "projection_dim": 64,
                                      "image_token_id": 1024}, dit_config=dit, chunk_size=8)
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():  # not the init's zeros and ones: every tensor must be mapped to the right place
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model


@torch.no_grad()
def test_transformers_pi0_converts_and_samples_the_same_actions(tmp_path, capsys):
    theirs = _tiny_transformers()
    theirs.save_pretrained(tmp_path / "pi0")
    code, stderr = _pi(capsys, "convert", "transformers-pi0", "--checkpoint", tmp_path / "pi0", "--output", tmp_path / "out")
    assert code == 0, stderr
    ours = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert ours.config.action_horizon == 8 and ours.config.variant == "pi0"

    batch, cameras, length, image_tokens = 2, 3, 6, 4
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.rand(batch, cameras, 3, 28, 28, generator=generator) * 2 - 1
    input_ids = torch.randint(3, 1000, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.bool)
    attention_mask[1, 4:] = False  # a padded prompt
    state, noise = torch.randn(batch, 32, generator=generator), torch.randn(batch, 8, 32, generator=generator)
    cameras_present = torch.ones(batch, cameras, dtype=torch.bool)
    # transformers' PI0 takes the image placeholders inside input_ids, ahead of the prompt.
    placeholders = torch.full((batch, cameras * image_tokens), 1024)
    expected = theirs.sample_actions(
        state=state, noise=noise, pixel_values=pixel_values, pixel_attention_mask=cameras_present,
        input_ids=torch.cat([placeholders, input_ids], 1),
        attention_mask=torch.cat([torch.ones_like(placeholders), attention_mask.long()], 1),
    )
    actions = ours.generate_actions(pixel_values, cameras_present, input_ids, attention_mask, state=state, noise=noise)
    torch.testing.assert_close(actions, expected, atol=1e-4, rtol=0)


def test_transformers_pi0_processor_statistics_are_read(tmp_path, capsys):
    _tiny_transformers().save_pretrained(tmp_path / "pi0")
    saved = {"state_mean": [0.5] * 4, "state_std": [2.0] * 4, "actions_mean": [1.0] * 3, "actions_std": [3.0] * 3}
    (tmp_path / "pi0" / "processor_config.json").write_text(json.dumps({"processor_class": "PI0Processor", **saved}))
    code, stderr = _pi(capsys, "convert", "transformers-pi0", "--checkpoint", tmp_path / "pi0", "--output", tmp_path / "out",
                       "--tokenizer", TOKENIZER, "--image-keys", "top", "wrist")
    assert code == 0, stderr
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert processor.norm_mode == "zscore" and processor.image_keys == ["top", "wrist"]
    assert processor.norm_stats.state.mean.tolist() == [0.5] * 4 and processor.norm_stats.actions.std.tolist() == [3.0] * 3
    # without --tokenizer no processor is written, and with it the statistics would go: the conversion says so
    assert pi_cli.main(["convert", "transformers-pi0", "--checkpoint", str(tmp_path / "pi0"), "--output",
                        str(tmp_path / "bare"), "--image-keys", "top", "wrist"]) == 0
    assert "normalisation statistics are not kept: no --tokenizer" in capsys.readouterr().out


def test_a_lerobot_folder_is_not_taken_for_a_transformers_pi0_one(tmp_path, capsys, converted):
    config = PiConfig.from_pretrained(converted("pi05"))
    source = lerobot_folder(tmp_path / "lerobot", converted("pi05"), config)
    code, stderr = _pi(capsys, "convert", "transformers-pi0", "--checkpoint", source, "--output", tmp_path / "out")
    assert code == 1 and "is a LeRobot policy folder, not a transformers PI0 folder: convert it with pi convert lerobot" in stderr
    assert not (tmp_path / "out").exists()


@torch.no_grad()
def test_transformers_pi05_converts_and_samples_the_same_actions(tmp_path, capsys):
    theirs = _tiny_transformers(PI05Config, PI05ForConditionalGeneration)
    theirs.save_pretrained(tmp_path / "pi05")
    code, stderr = _pi(capsys, "convert", "transformers-pi05", "--checkpoint", tmp_path / "pi05", "--output", tmp_path / "out")
    assert code == 0, stderr
    ours = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert ours.config.variant == "pi05" and ours.config.action_horizon == 8
    assert "transformers PI05 checkpoint" in (tmp_path / "out" / "README.md").read_text()

    batch, cameras, length, image_tokens = 2, 3, 6, 4
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.rand(batch, cameras, 3, 28, 28, generator=generator) * 2 - 1
    cameras_present = torch.ones(batch, cameras, dtype=torch.bool)
    cameras_present[1, 1] = False  # the second row has no second camera: its image is never read
    prompt = torch.randint(3, 1000, (batch, length), generator=generator)  # stands for BOS + "Task: ..., State: ..."
    attention_mask = torch.ones(batch, length, dtype=torch.bool)
    attention_mask[1, 4:] = False  # a padded prompt
    noise = torch.randn(batch, 8, 32, generator=generator)
    # transformers' PI05 takes input_ids as its processor writes them: per row, the image placeholders of the cameras
    # that row has, then the prompt, right-padded. Neither model takes a state tensor: it is in the prompt.
    rows = [torch.cat([torch.full((int(present.sum()) * image_tokens,), 1024), ids[valid]])
            for ids, valid, present in zip(prompt, attention_mask, cameras_present)]
    expected = theirs.sample_actions(
        input_ids=pad_sequence(rows, batch_first=True), pixel_values=pixel_values, pixel_attention_mask=cameras_present,
        attention_mask=pad_sequence([torch.ones(len(row), dtype=torch.long) for row in rows], batch_first=True), noise=noise,
    )
    actions = ours.generate_actions(pixel_values, cameras_present, prompt, attention_mask, noise=noise)
    torch.testing.assert_close(actions, expected, atol=1e-4, rtol=0)


def test_transformers_pi05_prompt_is_ours():
    """PI05's processor writes, after its image placeholders, the very π0.5 prompt ours writes, the state in it."""
    tokenizer = tokenizer_from_sentencepiece(TOKENIZER)
    state = np.array([-1.3, -0.2, 0.0, 0.51, 1.0, 2.0])  # normalised; some outside [-1, 1]
    task = " pick_up the\nred cube "
    stand_in = SimpleNamespace(image_token="<image>", image_seq_length=4, tokenizer=tokenizer)  # all build_prompts reads
    (theirs,) = PI05Processor.build_prompts(stand_in, [task], [[None, None]], torch.tensor(state, dtype=torch.float32)[None])
    assert theirs.startswith("<image>" * 8 + tokenizer.bos_token + "Task: pick up the red cube, State: -1 102 128 ")
    ours = tokenize_prompt(tokenizer, "pi05", task, 200, state)
    their_ids = tokenizer(theirs.removeprefix("<image>" * 8), add_special_tokens=False).input_ids
    assert their_ids == [token for token, valid in zip(ours.input_ids, ours.attention_mask) if valid]


def test_transformers_pi05_processor_quantiles_are_read(tmp_path, capsys):
    _tiny_transformers(PI05Config, PI05ForConditionalGeneration).save_pretrained(tmp_path / "pi05")
    saved = {"state_q01": [-1.0] * 4, "state_q99": [2.0] * 4, "actions_mean": [1.0] * 3, "actions_std": [3.0] * 3,
             "actions_q01": [0.0] * 3, "actions_q99": [4.0] * 3, "max_state_dim": 32, "chunk_size": 8}
    config = tmp_path / "pi05" / "processor_config.json"
    config.write_text(json.dumps({"processor_class": "PI05Processor", **saved}))
    code, stderr = _pi(capsys, "convert", "transformers-pi05", "--checkpoint", tmp_path / "pi05", "--output", tmp_path / "out",
                       "--tokenizer", TOKENIZER)
    assert code == 0, stderr
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert processor.norm_mode == "quantile" and processor.variant == "pi05"
    assert processor.norm_stats.state.q99.tolist() == [2.0] * 4 and processor.norm_stats.actions.q01.tolist() == [0.0] * 3
    # PI05 picks the mode per feature; ours has one for both
    mixed = {key: value for key, value in saved.items() if not key.startswith("state_q")}
    config.write_text(json.dumps({**mixed, "state_mean": [0.0] * 4, "state_std": [1.0] * 4}))
    code, stderr = _pi(capsys, "convert", "transformers-pi05", "--checkpoint", tmp_path / "pi05", "--output", tmp_path / "out2",
                       "--tokenizer", TOKENIZER)
    assert code == 1 and "state by zscore, actions by quantile" in stderr


def test_a_transformers_pi0_folder_is_not_taken_for_a_pi05_one(tmp_path, capsys):
    _tiny_transformers().save_pretrained(tmp_path / "pi0")
    code, stderr = _pi(capsys, "convert", "transformers-pi05", "--checkpoint", tmp_path / "pi0", "--output", tmp_path / "out")
    assert code == 1 and "is a transformers PI0 folder, not a transformers PI05 folder: convert it with pi convert " \
                         "transformers-pi0" in stderr
    assert not (tmp_path / "out").exists()

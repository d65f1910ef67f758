"""`pi export lerobot`: π folders -> LeRobot 0.6 policy folders.

LeRobot is not installed here; its side is the fixtures LeRobot 0.6.1 wrote (../shared/fixtures/lerobot): a
policy converted from one of them and exported again must give back its files (names, shapes, values, config,
processor step lists, statistics), and a model of ours must come back bit-identical through LeRobot's layout.
Loading the exports in LeRobot itself is a check outside the suite (a Python 3.12 interpreter with LeRobot).
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pi_cli
from conftest import FIXTURES, PROCESSOR, noisy_tiny_model, tiny_config
from configuration_pi import PiConfig
from conversion.convert_lerobot import convert_state_dict
from conversion.export_lerobot import (EXPERT_HEAD, PALIGEMMA_HEAD, export_lerobot, lerobot_state_dict,
                                       lerobot_variants)
from conversion.hf_folder import build_processor, write_folder
from modeling_pi import PiForActionGeneration
from processing_pi import NormStats, PiProcessor, Robot
from processing_pi.normalization import ArrayStats

LEROBOT = FIXTURES / "lerobot"
VARIANTS = ("pi0", "pi05", "pi0_fast")
STATE_DIM, ACTION_DIM = 5, 4
PIPELINES = ("policy_preprocessor", "policy_postprocessor")


def _pi(capsys, *args) -> tuple[int, str, str]:
    code = pi_cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lerobot_shaped_model(variant: str, **overrides):
    """A noisy tiny model with LeRobot's 8 query heads, its Gemma stacks configured as the converters write them."""
    base = tiny_config(variant)
    sizes = {"text_config": {**base.text_config.to_dict(), "num_attention_heads": 8, "use_bidirectional_attention": True}}
    if variant != "pi0_fast":
        sizes["expert_config"] = {**base.expert_config.to_dict(), "num_attention_heads": 8, "use_bidirectional_attention": True}
    return noisy_tiny_model(variant, **sizes, **overrides)


def robot_stats(seed: int = 0) -> NormStats:
    """Statistics in float64 that float32 cannot hold exactly: the export must keep every bit."""
    rng = np.random.default_rng(seed)

    def stats(dim):
        return ArrayStats(mean=rng.normal(size=dim), std=rng.random(dim) + 0.5, q01=rng.random(dim) - 2, q99=rng.random(dim) + 2)

    return NormStats(state=stats(STATE_DIM), actions=stats(ACTION_DIM))


def our_folder(path, variant: str, norm_mode: str | None = None, stats: NormStats | None = None, dtype: str = "float32",
               **overrides):
    """A folder as `pi convert` writes it: a noisy tiny model, its processor with the robot's statistics."""
    model = lerobot_shaped_model(variant, **overrides).to(getattr(torch, dtype))
    fast = PROCESSOR / "fast_tokenizer" if variant == "pi0_fast" else None
    processor = build_processor(model.config, PROCESSOR / "tokenizer.model", fast, stats if stats is not None else robot_stats(),
                                norm_mode)
    model.config.dtype = dtype  # as the converters record it
    return write_folder(path, model.config, model.state_dict(), "tiny", processor)


def import_lerobot(folder, output) -> int:
    args = ["convert", "lerobot", "--checkpoint", folder, "--output", output, "--tokenizer", PROCESSOR / "tokenizer.model",
            "--fast-tokenizer", PROCESSOR / "fast_tokenizer"]
    return pi_cli.main([str(a) for a in args])


def config_differences(first, second) -> set[str]:
    a, b = PiConfig.from_pretrained(first).to_dict(), PiConfig.from_pretrained(second).to_dict()
    return {key for key in set(a) | set(b) if a.get(key) != b.get(key)} - {"transformers_version"}


# ---- ours -> LeRobot -> ours ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant, norm_mode, dtype, overrides", [
    ("pi0", None, "float32", {}), ("pi0", "quantile", "float32", {}), ("pi05", None, "float32", {}),
    ("pi05", "zscore", "bfloat16", {}), ("pi0_fast", None, "float32", {}),
    ("pi0_fast", None, "bfloat16", {"tie_word_embeddings": False}),
])
def test_ours_to_lerobot_and_back_is_exact(tmp_path, capsys, variant, norm_mode, dtype, overrides):
    source = our_folder(tmp_path / "ours", variant, norm_mode, dtype=dtype, **overrides)
    code, out, err = _pi(capsys, "export", "lerobot", source, tmp_path / "lerobot", "--allow-custom-sizes")
    assert code == 0, err
    assert "unpatched LeRobot cannot load" in out and "follows openpi's pre-processing" in out
    assert json.loads((tmp_path / "lerobot" / "config.json").read_text())["dtype"] == dtype  # LeRobot's precision
    assert import_lerobot(tmp_path / "lerobot", tmp_path / "back") == 0

    ours, back = load_file(source / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(ours) == set(back)
    for name, tensor in ours.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    # LeRobot runs LeRobot's pre-processing and (π0-FAST) its decoding positions: only those settings change
    assert config_differences(source, tmp_path / "back") == ({"skip_position_after_prefix"} if variant == "pi0_fast" else set())
    first, second = PiProcessor.from_pretrained(source), PiProcessor.from_pretrained(tmp_path / "back")
    assert second.norm_stats.to_dict() == first.norm_stats.to_dict()  # every float64 bit
    assert (second.norm_mode, second.image_keys, second.max_token_len) == (first.norm_mode, first.image_keys, first.max_token_len)
    assert (first.conventions, second.conventions) == ("openpi", "lerobot")


def test_fast_training_targets_keep_their_length_whatever_the_decoding_budget(tmp_path, capsys):
    """LeRobot's max_action_tokens is the training targets' length (the processor's 256), max_decoding_steps the
    generation budget (the model's max_new_tokens)."""
    source = our_folder(tmp_path / "ours", "pi0_fast", max_new_tokens=40)
    code, _, err = _pi(capsys, "export", "lerobot", source, tmp_path / "lerobot", "--allow-custom-sizes")
    assert code == 0, err
    config = json.loads((tmp_path / "lerobot" / "config.json").read_text())
    assert (config["max_action_tokens"], config["max_decoding_steps"]) == (256, 40)
    steps = json.loads((tmp_path / "lerobot" / "policy_preprocessor.json").read_text())["steps"]
    assert next(s for s in steps if s["registry_name"] == "action_tokenizer_processor")["config"]["max_action_tokens"] == 256


def test_the_lerobot_layout_is_what_our_importer_reads_back():
    """On the weights alone: LeRobot's names and extra heads, renamed back, fill the model exactly."""
    for variant in VARIANTS:
        model = lerobot_shaped_model(variant)
        state_dict = model.state_dict()
        exported = lerobot_state_dict(state_dict, model.config)
        assert all(name.startswith("model.") for name in exported)  # LeRobot's policy wrapper
        assert torch.equal(exported[PALIGEMMA_HEAD], state_dict["language_model.embed_tokens.weight"])
        if model.config.is_flow:
            assert not exported[EXPERT_HEAD].any()  # LeRobot never reads it; zeros
        back = convert_state_dict(exported, model.config)
        assert set(back) == set(state_dict) and all(torch.equal(back[name], state_dict[name]) for name in state_dict)


# ---- LeRobot's fixture -> ours -> LeRobot ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_exports(tmp_path_factory):
    """variant -> (LeRobot's fixture folder, ours converted from it, that converted folder exported again)."""
    cache = {}

    def get(variant):
        if variant not in cache:
            root = tmp_path_factory.mktemp(f"fixture_{variant}")
            original = LEROBOT / variant / "pretrained_model"
            assert import_lerobot(original, root / "ours") == 0
            export_lerobot(root / "ours", root / "lerobot", allow_custom_sizes=True, log=lambda line: None)
            cache[variant] = original, root / "ours", root / "lerobot"
        return cache[variant]

    return get


@pytest.mark.parametrize("variant", VARIANTS)
def test_lerobots_weights_come_back_as_lerobot_wrote_them(fixture_exports, variant):
    original, _, exported = fixture_exports(variant)
    theirs, ours = load_file(original / "model.safetensors"), load_file(exported / "model.safetensors")
    assert {name: (t.shape, t.dtype) for name, t in ours.items()} == {name: (t.shape, t.dtype) for name, t in theirs.items()}
    # π0 / π0.5 never read either head: we keep neither (PaliGemma's is written as the embedding, the expert's as zeros)
    unread = {PALIGEMMA_HEAD, EXPERT_HEAD} if variant != "pi0_fast" else set()
    assert [name for name in theirs if not torch.equal(theirs[name], ours[name])] == sorted(
        unread & set(theirs), key=list(theirs).index)


@pytest.mark.parametrize("variant", VARIANTS)
def test_lerobots_config_and_processor_files_come_back(fixture_exports, variant):
    original, _, exported = fixture_exports(variant)
    theirs, ours = (json.loads((folder / "config.json").read_text()) for folder in (original, exported))
    # camera shapes: LeRobot's are the dataset's images, ours the model's input size (LeRobot resizes either way)
    assert {key: value for key, value in ours.items() if value != theirs.get(key)} == {"input_features": ours["input_features"]}
    assert list(ours["input_features"]) == list(theirs["input_features"])
    assert ours["input_features"]["observation.state"] == theirs["input_features"]["observation.state"]
    for name in PIPELINES:
        their_steps, our_steps = (json.loads((folder / f"{name}.json").read_text())["steps"] for folder in (original, exported))
        assert [(s["registry_name"], sorted(s["config"]), s.get("state_file")) for s in our_steps] == \
               [(s["registry_name"], sorted(s["config"]), s.get("state_file")) for s in their_steps]
        for ours_step, their_step in zip(our_steps, their_steps):
            if ours_step["registry_name"] not in ("relative_actions_processor", "normalizer_processor", "unnormalizer_processor"):
                assert ours_step["config"] == their_step["config"]
            elif ours_step["registry_name"] != "relative_actions_processor":
                assert (ours_step["config"]["eps"], ours_step["config"]["norm_map"]) == \
                       (their_step["config"]["eps"], their_step["config"]["norm_map"])
            if "state_file" in ours_step:  # the statistics we keep (mean, std, q01, q99), LeRobot's values
                their_stats, our_stats = (load_file(folder / ours_step["state_file"]) for folder in (original, exported))
                assert set(our_stats) == {f"{key}.{stat}" for key in ("observation.state", "action")
                                          for stat in ("mean", "std", "q01", "q99")}
                assert all(torch.equal(our_stats[key], their_stats[key].double()) for key in our_stats)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_lerobot_policy_goes_round_through_ours_unchanged(fixture_exports, tmp_path, variant):
    """LeRobot's conventions survive: the second import is the first, weights, config and processor."""
    _, ours, exported = fixture_exports(variant)
    assert import_lerobot(exported, tmp_path / "again") == 0
    first, second = load_file(ours / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert set(first) == set(second) and all(torch.equal(first[name], second[name]) for name in first)
    assert config_differences(ours, tmp_path / "again") == set()
    assert PiProcessor.from_pretrained(tmp_path / "again").to_dict() == PiProcessor.from_pretrained(ours).to_dict()


# ---- full size: LeRobot's table ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_released_sizes_are_lerobots_named_variants_with_every_tensor(variant):
    """On meta tensors: the full-size model maps to gemma_2b / gemma_300m and to the fixture's tensor names."""
    config = PiConfig(variant=variant)
    names, unbuildable = lerobot_variants(config)
    assert unbuildable == {}
    assert names == ({"paligemma_variant": "gemma_2b"} | ({"action_expert_variant": "gemma_300m"} if config.is_flow else {}))
    with torch.device("meta"):
        state_dict = PiForActionGeneration(config).state_dict()
    exported = lerobot_state_dict(state_dict, config)
    fixture = load_file(LEROBOT / variant / "pretrained_model" / "model.safetensors")

    def layer_free(names):
        return {".".join(part if not part.isdigit() else "N" for part in name.split(".")) for name in names}

    assert layer_free(exported) == layer_free(fixture)
    if config.is_flow:
        assert tuple(exported[EXPERT_HEAD].shape) == (config.text_config.vocab_size, config.expert_config.hidden_size)


# ---- what cannot be exported ------------------------------------------------------------------------------


def test_sizes_lerobot_cannot_build_are_refused_without_the_flag(tmp_path, capsys):
    source = our_folder(tmp_path / "ours", "pi05")
    code, _, err = _pi(capsys, "export", "lerobot", source, tmp_path / "lerobot")
    assert code == 1 and err.startswith("pi export lerobot: error: ")
    assert "language model (hidden_size 64" in err and "vocabulary (1024 tokens" in err and "--allow-custom-sizes" in err
    assert not (tmp_path / "lerobot").exists() and [path.name for path in tmp_path.iterdir()] == ["ours"]


def test_a_fast_model_at_another_image_size_needs_the_flag():
    config = PiConfig(variant="pi0_fast", vision_config={"model_type": "siglip_vision_model", "image_size": 448,
                                                         "hidden_size": 1152, "intermediate_size": 4304,
                                                         "num_hidden_layers": 27, "num_attention_heads": 16,
                                                         "patch_size": 14})
    assert set(lerobot_variants(config)[1]) == {"image size"}
    assert lerobot_variants(PiConfig(variant="pi05", vision_config=config.vision_config.to_dict()))[1] == {}


def test_other_head_counts_are_refused_even_with_the_flag(tmp_path, capsys, policy_folder):
    """The openpi fixtures have 4 query heads; LeRobot's π models have 8 and its folders record none."""
    code, _, err = _pi(capsys, "export", "lerobot", policy_folder("pi0"), tmp_path / "lerobot", "--allow-custom-sizes")
    assert code == 1 and "4 query heads" in err and "config.json" in err


def test_unknown_robot_dims_are_refused(tmp_path, capsys):
    model = lerobot_shaped_model("pi0")
    processor = build_processor(model.config, PROCESSOR / "tokenizer.model", None, None)
    source = write_folder(tmp_path / "ours", model.config, model.state_dict(), "tiny", processor)
    code, _, err = _pi(capsys, "export", "lerobot", source, tmp_path / "lerobot", "--allow-custom-sizes")
    assert code == 1 and "processor_config.json" in err and "state and action dims are unknown" in err


def test_a_non_empty_output_is_left_alone(tmp_path, capsys):
    source = our_folder(tmp_path / "ours", "pi0")
    (tmp_path / "lerobot").mkdir()
    (tmp_path / "lerobot" / "keep.txt").write_text("mine")
    code, _, err = _pi(capsys, "export", "lerobot", source, tmp_path / "lerobot", "--allow-custom-sizes")
    assert code == 1 and "refusing to overwrite" in err
    assert [path.name for path in (tmp_path / "lerobot").iterdir()] == ["keep.txt"]


def test_pre_processing_lerobot_has_no_step_for_is_refused(tmp_path, capsys):
    model = lerobot_shaped_model("pi0")
    robot = {"cameras": {"base_0_rgb": "image"}, "state_keys": ["state"], "state_dim": STATE_DIM,
             "action_dim": ACTION_DIM, "delta_action_mask": [True, False]}
    processor = build_processor(model.config, PROCESSOR / "tokenizer.model", None, robot_stats(), robot=Robot.from_dict(robot))
    source = write_folder(tmp_path / "ours", model.config, model.state_dict(), "tiny", processor)
    code, _, err = _pi(capsys, "export", "lerobot", source, tmp_path / "lerobot", "--allow-custom-sizes")
    assert code == 1 and "delta_action_mask" in err


def test_what_the_robot_layout_holds_beyond_lerobots_pipeline_is_named(tmp_path, capsys):
    model = lerobot_shaped_model("pi0")
    robot = {"cameras": {"base_0_rgb": "image"}, "state_keys": ["state"], "state_dim": STATE_DIM,
             "action_dim": ACTION_DIM, "default_prompt": "stack the cups", "metadata": {"reset_pose": [0.0] * 6}}
    processor = build_processor(model.config, PROCESSOR / "tokenizer.model", None, robot_stats(), robot=Robot.from_dict(robot))
    source = write_folder(tmp_path / "ours", model.config, model.state_dict(), "tiny", processor)
    code, out, _ = _pi(capsys, "export", "lerobot", source, tmp_path / "lerobot", "--allow-custom-sizes")
    assert code == 0  # before: dropped without a word
    assert ("note: the robot layout's default prompt 'stack the cups' (LeRobot reads the task from each observation) "
            "and metadata (reset_pose; openpi's server sends it to clients, LeRobot has none) are not exported.") in out


def test_a_folder_without_its_processor_is_refused(tmp_path, capsys):
    model = lerobot_shaped_model("pi0")
    source = write_folder(tmp_path / "ours", model.config, model.state_dict(), "tiny")
    code, _, err = _pi(capsys, "export", "lerobot", source, tmp_path / "lerobot")
    assert code == 1 and "no processor_config.json" in err


@pytest.mark.parametrize("source, message", [
    (FIXTURES / "lerobot" / "pi0" / "pretrained_model", "is a LeRobot policy folder already: LeRobot loads it as it is"),
    (FIXTURES / "openpi" / "pi0", "is an openpi (orbax) checkpoint, not a π folder: convert it with pi convert openpi"),
])
def test_a_folder_that_is_not_a_pi_folder_is_named_for_what_it_is(tmp_path, capsys, source, message):
    code, _, err = _pi(capsys, "export", "lerobot", source, tmp_path / "lerobot")
    assert code == 1 and message in err, err
    assert not (tmp_path / "lerobot").exists()

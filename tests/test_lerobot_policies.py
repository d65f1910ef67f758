"""LeRobot-trained policies (`pi convert lerobot`), against what LeRobot 0.6.1 itself computed from them.

The fixtures (../shared/fixtures/lerobot/<variant>/) hold a π0, a π0.5 and a π0-FAST after one training step
in LeRobot, saved as `lerobot-train` saves them, with LeRobot's whole pipeline run on two raw observations:
its preprocessor, the policy, its postprocessor. Converted with no `--config`, ours must give the same.
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoProcessor

import modeling_pi  # noqa: F401  (registers "pi" with the Auto classes)
import pi_cli
from conftest import FIXTURES, PROCESSOR
from conversion.convert_lerobot import architecture_from_shapes, rename_state_dict
from conversion.export_lerobot import lerobot_name
from modeling_pi import PiConfig

LEROBOT = FIXTURES / "lerobot"
FLOW = ("pi0", "pi05")
PROMPT_INPUTS = ("pixel_values", "pixel_attention_mask", "input_ids", "attention_mask")


def _convert(folder, output, *options) -> int:
    args = ["convert", "lerobot", "--checkpoint", folder, "--output", output, "--tokenizer", PROCESSOR / "tokenizer.model",
            "--fast-tokenizer", PROCESSOR / "fast_tokenizer", *options]
    return pi_cli.main([str(a) for a in args])


@pytest.fixture(scope="module")
def lerobot_policy(tmp_path_factory):
    """variant -> (model, processor, io, io.json), converted once per module (the folder: `model.name_or_path`)."""
    cache = {}

    def get(variant):
        if variant not in cache:
            output = tmp_path_factory.mktemp("lerobot") / variant
            assert _convert(LEROBOT / variant / "pretrained_model", output) == 0
            meta = json.loads((LEROBOT / variant / "io.json").read_text())
            cache[variant] = (AutoModel.from_pretrained(output).eval(), AutoProcessor.from_pretrained(output),
                              load_file(LEROBOT / variant / "io.safetensors"), meta)
        return cache[variant]

    return get


def _raw_inputs(processor, io, meta, **extra):
    images = {camera.removeprefix("observation.images."): io[f"raw.{camera}"].numpy() for camera in meta["cameras"]}
    return processor(images=images, prompt=meta["tasks"], state=io["raw.observation.state"].numpy(), **extra)


@pytest.mark.parametrize("variant", ["pi0", "pi05", "pi0_fast"])
def test_the_architecture_and_conventions_come_from_the_checkpoint_alone(lerobot_policy, variant):
    model, processor, _, meta = lerobot_policy(variant)
    sizes = json.loads((LEROBOT / variant / "architecture.json").read_text())
    config = model.config
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers, config.text_config.intermediate_size,
            config.text_config.num_attention_heads, config.text_config.num_key_value_heads, config.text_config.head_dim) == tuple(
        sizes["paligemma"][key] for key in ("width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim"))
    assert (config.vision_config.hidden_size, config.vision_config.num_attention_heads, config.vision_config.image_size,
            config.num_image_tokens) == tuple(sizes["siglip"][key] for key in ("width", "num_heads", "image_size", "num_image_tokens"))
    assert config.text_config.vocab_size == sizes["vocab_size"] and config.action_horizon == sizes["action_horizon"]
    if variant in FLOW:
        assert config.expert_config.hidden_size == sizes["action_expert"]["width"] and config.action_dim == sizes["action_dim"]
    # LeRobot's camera names, normaliser and conventions, recorded in the processor
    assert config.image_keys == [camera.removeprefix("observation.images.") for camera in meta["cameras"]]
    assert processor.conventions == "lerobot" and processor.image_processor.conventions == "lerobot"
    assert processor.norm_mode == ("quantile" if variant == "pi05" else "zscore")
    assert "follows LeRobot's conventions" in (Path(model.name_or_path) / "README.md").read_text()


@pytest.mark.parametrize("variant", FLOW)
@torch.no_grad()
def test_flow_policies_act_as_in_lerobot_from_raw_observations(lerobot_policy, variant):
    model, processor, io, meta = lerobot_policy(variant)
    inputs = _raw_inputs(processor, io, meta)
    assert torch.equal(inputs["input_ids"], io["tokenized_prompt"]) and torch.equal(inputs["attention_mask"], io["tokenized_prompt_mask"])
    for i, camera in enumerate(meta["cameras"]):
        torch.testing.assert_close(model.get_image_features(inputs["pixel_values"][:, i]),
                                   io[f"expected.image_features.{camera}"], atol=1e-5, rtol=0)
    state = {"state": inputs["state"]} if variant == "pi0" else {}
    chunk = model.generate_actions(*(inputs[key] for key in PROMPT_INPUTS), noise=io["noise"], **state)
    actions = processor.post_process(chunk).actions
    largest = io["expected.actions"].abs().max()
    assert (actions - io["expected.actions"]).abs().max() <= 1e-4 * largest
    assert actions.shape == io["expected.actions"].shape


@pytest.mark.parametrize("variant", FLOW)
@torch.no_grad()
def test_flow_training_pass_reads_lerobot_targets_as_lerobot_does(lerobot_policy, variant):
    model, processor, io, meta = lerobot_policy(variant)
    inputs = _raw_inputs(processor, io, meta, actions=io["raw.train_actions"].numpy())
    torch.testing.assert_close(inputs["actions"][..., :6], io["train.actions_normalized"], atol=1e-5, rtol=0)
    state = {"state": inputs["state"]} if variant == "pi0" else {}
    output = model(*(inputs[key] for key in PROMPT_INPUTS), actions=inputs["actions"], noise=io["train.noise"],
                   timestep=io["train.time"], **state)
    torch.testing.assert_close(output.losses, io["expected.train_losses"].mean(-1), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_fast_policy_decodes_lerobots_greedy_tokens_with_its_own_head(lerobot_policy):
    model, processor, io, meta = lerobot_policy("pi0_fast")
    assert not model.config.tie_word_embeddings and not model.config.skip_position_after_prefix
    fixture = load_file(LEROBOT / "pi0_fast" / "pretrained_model" / "model.safetensors")
    assert torch.equal(model.lm_head.weight, fixture["model.paligemma_with_expert.paligemma.lm_head.weight"])
    inputs = _raw_inputs(processor, io, meta)
    # LeRobot's prompt, then the BOS it appends before decoding
    length = io["tokenized_prompt"].shape[1]
    assert torch.equal(inputs["input_ids"][:, :length], io["tokenized_prompt"])
    assert (inputs["input_ids"][:, length] == processor.tokenizer.bos_token_id).all() and inputs["attention_mask"][:, length].all()
    last, _ = model.encode_prefix(*(inputs[key] for key in PROMPT_INPUTS), outputs="last")
    torch.testing.assert_close(last @ model.lm_head.weight.T, io["expected.prefill_logits"], atol=1e-4, rtol=0)
    tokens = model.generate_actions(*(inputs[key] for key in PROMPT_INPUTS))
    expected = io["expected.generated_tokens"]
    eos = processor.tokenizer.eos_token_id
    for row, want in zip(tokens.tolist(), expected.tolist()):
        end = want.index(eos) + 1 if eos in want else len(want)
        assert row[:end] == want[:end]


def test_fast_tokens_become_lerobots_actions(lerobot_policy):
    _, processor, io, _ = lerobot_policy("pi0_fast")
    out = processor.post_process(io["expected.generated_tokens"])
    # LeRobot's decoding fails on these random tokens and falls back to zeros (its mean after un-normalising):
    # the same numbers, flagged as no prediction
    torch.testing.assert_close(out.actions, io["expected.actions"], atol=1e-5, rtol=0)
    assert not out.valid.any()
    # nor is an answer with no FAST tokens, which LeRobot reads as zeros
    start = processor.tokenizer.encode("Action: ", add_special_tokens=False)
    assert not processor.post_process(torch.tensor([start + [processor.tokenizer.convert_tokens_to_ids("|")]])).valid.any()
    # a well-formed target sequence decodes as LeRobot decodes it
    targets = io["train.action_tokens"][:, 1:]
    decoded = processor.post_process(targets)
    assert decoded.valid.all()
    stats = processor.norm_stats.actions
    torch.testing.assert_close(decoded.actions, torch.from_numpy(
        stats.unnormalize(io["expected.target_decoded_normalized"].double().numpy(), "zscore", "lerobot")).float(), atol=1e-5, rtol=0)


@torch.no_grad()
def test_fast_training_targets_and_loss_are_lerobots(lerobot_policy):
    model, processor, io, meta = lerobot_policy("pi0_fast")
    inputs = _raw_inputs(processor, io, meta, actions=io["raw.train_actions"].numpy())
    postfix = inputs["token_type_ids"].bool()
    for row in range(len(postfix)):
        want = io["train.action_tokens"][row][io["train.action_token_mask"][row].bool()]
        assert torch.equal(inputs["input_ids"][row][postfix[row]], want)
    output = model(*(inputs[key] for key in PROMPT_INPUTS), token_type_ids=inputs["token_type_ids"], labels=inputs["labels"])
    targets = (inputs["labels"][:, 1:] != -100).sum(dim=1)
    token_mean = (output.losses * targets).sum() / targets.sum()  # LeRobot averages over every target token
    torch.testing.assert_close(token_mean, io["expected.train_loss"][0], atol=1e-4, rtol=0)


def test_the_unused_lm_head_of_a_flow_policy_is_dropped_and_said(tmp_path, capsys):
    code = _convert(LEROBOT / "pi0" / "pretrained_model", tmp_path / "out")
    assert code == 0 and "dropped PaliGemma's lm_head" in capsys.readouterr().out
    assert not any("lm_head" in key for key in load_file(tmp_path / "out" / "model.safetensors"))


# ---- LeRobot checkpoints of other sizes --------------------------------------------------------------


def _lerobot_tensors(variant: str, sizes: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights under LeRobot's names for a π model of `sizes` (the export's naming, the importer's inverse)."""
    config = PiConfig(variant=variant, **sizes)
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in modeling_pi.PiForActionGeneration(config).state_dict().items()}
    tensors = {lerobot_name(name): torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    embedding = tensors["model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"]
    tensors.setdefault("model.paligemma_with_expert.paligemma.lm_head.weight", embedding + 0.01)
    return tensors


@pytest.mark.parametrize("variant", ["pi0", "pi05", "pi0_fast"])
def test_other_sizes_are_inferred_from_the_shapes(variant):
    gemma = {"model_type": "gemma", "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 8, "num_hidden_layers": 3,
             "use_bidirectional_attention": True}
    sizes = {"vision_config": {"model_type": "siglip_vision_model", "hidden_size": 48, "intermediate_size": 40,
                               "num_hidden_layers": 1, "num_attention_heads": 3, "image_size": 56, "patch_size": 14,
                               "vision_use_head": False},
             "text_config": {**gemma, "hidden_size": 40, "intermediate_size": 24, "vocab_size": 300}}
    if variant in FLOW:
        expert = {**gemma, "hidden_size": 24, "intermediate_size": 16, "vocab_size": 1, "pad_token_id": None,
                  "bos_token_id": None, "eos_token_id": None}
        sizes |= {"expert_config": expert, "action_dim": 12}
    else:
        sizes["tie_word_embeddings"] = False
    tensors = _lerobot_tensors(variant, sizes, torch.Generator().manual_seed(0))
    renamed, notes = rename_state_dict(tensors, variant)
    head = {} if variant in FLOW else {"tie_word_embeddings": "lm_head.weight" not in renamed}
    inferred = PiConfig(variant=variant, **architecture_from_shapes({k: tuple(v.shape) for k, v in renamed.items()}, variant),
                        **head)
    expected = PiConfig(variant=variant, **sizes)
    assert inferred.to_diff_dict() == expected.to_diff_dict()
    assert ("lm_head.weight" in renamed) == (variant == "pi0_fast") and len(notes) == 1


def test_a_tied_head_stays_tied_and_mismatches_name_at_most_ten_tensors(tmp_path, capsys):
    folder = tmp_path / "lerobot"
    folder.mkdir()
    tensors = load_file(LEROBOT / "pi0_fast" / "pretrained_model" / "model.safetensors")
    head = "model.paligemma_with_expert.paligemma.lm_head.weight"
    tensors[head] = tensors["model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"].clone()
    save_file(tensors, folder / "model.safetensors")
    settings = json.loads((LEROBOT / "pi0_fast" / "pretrained_model" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(settings))
    assert _convert(folder, tmp_path / "tied") == 0
    assert AutoModel.from_pretrained(tmp_path / "tied").config.tie_word_embeddings

    PiConfig(variant="pi0_fast").to_json_file(tmp_path / "full_size.json")  # the released sizes: no tensor fits
    capsys.readouterr()
    code = _convert(folder, tmp_path / "out", "--config", tmp_path / "full_size.json")
    error = capsys.readouterr().err
    assert code == 1 and not (tmp_path / "out").exists()
    listed = re.search(r"filled by no tensor of the checkpoint: (.*) and (\d+) more\. (.*)", error)
    assert listed and len(listed[1].split(", ")) == 10 and "leave --config out" in listed[3]


def test_unsupported_policies_and_missing_statistics_are_named(tmp_path, capsys):
    source = LEROBOT / "pi0" / "pretrained_model"
    folder = tmp_path / "act"
    folder.mkdir()
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    settings = json.loads((source / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**settings, "type": "act"}))
    code = pi_cli.main(["convert", "lerobot", "--checkpoint", str(folder), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 1 and "config.json" in error and "'type'" in error and "'act'" in error

    (folder / "config.json").write_text(json.dumps(settings))
    steps = json.loads((source / "policy_preprocessor.json").read_text())["steps"]
    state_file = next(step["state_file"] for step in steps if step["registry_name"] == "normalizer_processor")
    stats = {key: value for key, value in load_file(source / state_file).items() if key != "observation.state.std"}
    save_file(stats, folder / state_file)
    code = _convert(folder, tmp_path / "out")
    error = capsys.readouterr().err
    assert code == 1 and state_file in error and "observation.state.std" in error

    (folder / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes()[:5000])  # a cut download
    code = pi_cli.main(["convert", "lerobot", "--checkpoint", str(folder), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 1 and "model.safetensors: not a readable safetensors file" in error, error
    assert not (tmp_path / "out").exists()

    for flags, message in ((["--fast-tokenizer", PROCESSOR / "fast_tokenizer"], "which also needs --tokenizer"),
                           (["--tokenizer", PROCESSOR / "missing.model"], "missing.model: no such file")):
        code = pi_cli.main(["convert", "lerobot", "--checkpoint", str(source), "--output", str(tmp_path / "out"),
                            *map(str, flags)])
        error = capsys.readouterr().err
        assert code == 1 and message in error, error  # refused before the weights are read, not dropped
    assert not (tmp_path / "out").exists()


def _damage_pipeline(folder: Path, damage: str) -> str:
    pipeline = folder / "policy_preprocessor.json"
    steps = json.loads(pipeline.read_text())["steps"]
    normalizer = next(step for step in steps if step["registry_name"] == "normalizer_processor")
    if damage == "cut pipeline":
        pipeline.write_text(pipeline.read_text()[:40])
        return "policy_preprocessor.json: not readable JSON"
    if damage == "normaliser without config":
        del normalizer["config"]
        pipeline.write_text(json.dumps({"steps": steps}))
        return "policy_preprocessor.json: not a LeRobot processor pipeline (its normaliser step: KeyError('config'))"
    if damage == "cut statistics":
        path = folder / normalizer["state_file"]
        path.write_bytes(path.read_bytes()[:4])
        return f"{normalizer['state_file']}: not a readable safetensors file"
    if damage == "config a list":
        (folder / "config.json").write_text("[]")
        return "config.json: holds a JSON list, where an object ({...}) belongs"
    raise AssertionError(damage)


@pytest.mark.parametrize("damage", ["cut pipeline", "normaliser without config", "cut statistics", "config a list"])
def test_a_damaged_policy_file_is_named(tmp_path, capsys, damage):
    folder = Path(shutil.copytree(LEROBOT / "pi0" / "pretrained_model", tmp_path / "policy"))
    message = _damage_pipeline(folder, damage)
    assert _convert(folder, tmp_path / "out") == 1  # before: a traceback, or "config.json lacks the entry 'config'"
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_fast_decoding_settings_the_model_does_not_carry_are_refused_or_said(tmp_path, capsys):
    folder = Path(shutil.copytree(LEROBOT / "pi0_fast" / "pretrained_model", tmp_path / "policy"))
    settings = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**settings, "fast_skip_tokens": 64}))
    assert _convert(folder, tmp_path / "out") == 1
    assert "config.json: fast_skip_tokens is 64; π0-FAST here places FAST tokens 128 ids" in capsys.readouterr().err
    (folder / "config.json").write_text(json.dumps({**settings, "temperature": 0.7, "n_action_steps": 4,
                                                    "max_action_tokens": 40}))
    assert _convert(folder, tmp_path / "out") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "FAST training targets to max_action_tokens=40; the converted processor writes them to 256" in out
    assert "generate_actions(..., temperature=0.7)" in out
    assert "chunks of chunk_size=10 steps, as n_action_steps=4 steps" in out  # LeRobot's reading, not the converted model's


def _with_normaliser(source: Path, folder: Path, norm_map: dict, renames: dict) -> Path:
    """A copy of a LeRobot policy whose normaliser reads `norm_map`, its statistics renamed by `renames`."""
    shutil.copytree(source, folder)
    pipeline = json.loads((folder / "policy_preprocessor.json").read_text())
    normalizer = next(step for step in pipeline["steps"] if step["registry_name"] == "normalizer_processor")
    normalizer["config"]["norm_map"].update(norm_map)
    (folder / "policy_preprocessor.json").write_text(json.dumps(pipeline))
    stats = {key: value for key, value in load_file(folder / normalizer["state_file"]).items()
             if key.rpartition(".")[2] not in renames.values()}  # LeRobot saves min, max, q10, ... too: theirs go
    save_file({re.sub(r"\.(q01|q99)$", lambda m: "." + renames.get(m[1], m[1]), key): value for key, value in stats.items()},
              folder / normalizer["state_file"])
    return folder


def test_every_normaliser_lerobot_applies_to_both_is_read_as_lerobot_reads_it(lerobot_policy, tmp_path, capsys):
    """MIN_MAX and QUANTILE10 are QUANTILES' formula over other statistics; IDENTITY passes both through."""
    _, quantiles, io, meta = lerobot_policy("pi05")
    source = LEROBOT / "pi05" / "pretrained_model"
    chunk = torch.linspace(-1, 1, 50 * 32).reshape(1, 50, 32)
    for mode, renames in (("MIN_MAX", {"q01": "min", "q99": "max"}), ("QUANTILE10", {"q01": "q10", "q99": "q90"})):
        folder = _with_normaliser(source, tmp_path / mode, {"STATE": mode, "ACTION": mode}, renames)
        assert _convert(folder, tmp_path / f"{mode}_out") == 0
        low, high = renames.values()
        assert f"the state by {mode} ([{low}, {high}] onto [-1, 1]) and the actions by {mode}" in capsys.readouterr().out
        processor = AutoProcessor.from_pretrained(tmp_path / f"{mode}_out")
        assert torch.equal(_raw_inputs(processor, io, meta)["input_ids"], _raw_inputs(quantiles, io, meta)["input_ids"])
        torch.testing.assert_close(processor.post_process(chunk).actions, quantiles.post_process(chunk).actions)

    folder = _with_normaliser(source, tmp_path / "identity", {"STATE": "IDENTITY", "ACTION": "IDENTITY"}, {})
    assert _convert(folder, tmp_path / "identity_out") == 0
    assert "passes state and actions through (IDENTITY)" in capsys.readouterr().out
    processor = AutoProcessor.from_pretrained(tmp_path / "identity_out")
    dim = quantiles.norm_stats.actions.dim  # LeRobot cuts its chunks to the action feature's dims
    torch.testing.assert_close(processor.post_process(chunk).actions, chunk[..., :dim].float())
    assert processor.norm_stats is None and processor.robot_action_dim == dim

    folder = _with_normaliser(source, tmp_path / "mixed", {"STATE": "MEAN_STD"}, {})
    assert _convert(folder, tmp_path / "mixed_out") == 1
    assert "state by MEAN_STD and actions by QUANTILES; the π processor normalises both one way" in capsys.readouterr().err


def test_only_pi0_needs_state_and_actions_padded_to_one_dim(tmp_path, capsys):
    """π0 projects the state padded to max_state_dim; π0.5 and π0-FAST write it unpadded into the prompt."""
    for variant, code in (("pi05", 0), ("pi0_fast", 0), ("pi0", 1)):
        folder = Path(shutil.copytree(LEROBOT / variant / "pretrained_model", tmp_path / variant))
        settings = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**settings, "max_state_dim": 8}))
        assert _convert(folder, tmp_path / f"{variant}_out") == code
    assert "π0 pads state and actions to one dim; this checkpoint has max_state_dim 8" in capsys.readouterr().err


def test_info_tells_how_a_lerobot_policy_converted_without_its_normaliser_gets_statistics(tmp_path, capsys):
    source = LEROBOT / "pi05" / "pretrained_model"
    folder = tmp_path / "weights_only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((source / name).read_bytes())
    assert _convert(folder, tmp_path / "out") == 0
    assert "it has no normaliser statistics (no policy_preprocessor.json" in capsys.readouterr().out  # said at once
    assert pi_cli.main(["info", str(tmp_path / "out")]) == 0
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "no normalisation statistics" in out and "pi convert lerobot from the policy folder with its policy_preprocessor" in out


def test_lerobot_conventions_normalise_as_lerobot_does():
    from processing_pi.normalization import ArrayStats

    stats = ArrayStats(mean=np.array([1.0, -2.0]), std=np.array([0.5, 0.0]), q01=np.array([0.0, 3.0]), q99=np.array([2.0, 3.0]))
    x = np.array([[2.0, 3.5]])
    assert np.allclose(stats.normalize(x, "zscore", "lerobot"), (x - stats.mean) / (stats.std + 1e-8))
    assert np.allclose(stats.unnormalize(x, "zscore", "lerobot"), x * stats.std + stats.mean)
    # quantiles: the range alone, replaced by 1e-8 only where it is zero
    assert np.allclose(stats.normalize(x, "quantile", "lerobot"), [[1.0, 2 * 0.5 / 1e-8 - 1]])
    assert np.allclose(stats.unnormalize(np.array([[0.0, 0.0]]), "quantile", "lerobot"), [[1.0, 3.0 + 0.5e-8]])


def test_lerobot_prompts_are_written_as_lerobot_writes_them():
    from processing_pi import tokenizer_from_sentencepiece
    from processing_pi.prompts import discretize_state, tokenize_prompt

    tokenizer = tokenizer_from_sentencepiece(PROCESSOR / "tokenizer.model")
    bos = [tokenizer.bos_token_id]
    task = " pick_up the Cube "
    pi0 = tokenize_prompt(tokenizer, "pi0", task, 48, conventions="lerobot")
    assert pi0.input_ids[: sum(pi0.attention_mask)] == bos + tokenizer.encode(task + "\n", add_special_tokens=False)
    assert pi0.input_ids != tokenize_prompt(tokenizer, "pi0", task, 48).input_ids  # openpi cleans the text
    state = np.array([0.5, -0.25])
    fast = tokenize_prompt(tokenizer, "pi0_fast", task, 60, state, conventions="lerobot")
    text = f"Task: pick up the Cube, State: {' '.join(map(str, discretize_state(state)))};\n"  # cleaned, not lower-cased
    assert fast.input_ids[: sum(fast.attention_mask) - 1] == bos + tokenizer.encode(text, add_special_tokens=False)
    assert len(fast.input_ids) == 61 and fast.input_ids[-1] == bos[0] and fast.attention_mask[-1]

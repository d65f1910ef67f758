"""A newcomer's first hour: `pi --help` answers without importing the jobs, every job's help shows its defaults,
a negative state parses, `pi info` says what a folder expects, a converted folder can be completed later (the
convert flags and `PiProcessor.from_pretrained(**settings)`), and `post_process` unpacks into (actions, valid)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor, pipeline

import modeling_pi  # noqa: F401  (registers "pi" with the Auto classes)
import pi_cli
from conftest import CAMERAS, FIXTURES, OPENPI, PROCESSOR, ROBOT_DIM
from conversion.convert_openpi import convert_openpi
from conversion.openpi_configs import openpi_config
from modeling_pi.input_checks import check_source
from processing_pi import NormStats, PiActionOutput, PiProcessor

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER, FAST = PROCESSOR / "tokenizer.model", PROCESSOR / "fast_tokenizer"
STATS = PROCESSOR / "norm_stats.json"
DROID = FIXTURES / "openpi_policies" / "pi05_droid" / "checkpoint"


def _pi(capsys, *args) -> tuple[int, str, str]:
    code = pi_cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _help(capsys, *job) -> str:
    with pytest.raises(SystemExit) as exit_:
        pi_cli.main([*job, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal's width


@pytest.fixture(scope="module")
def fast_folder(tmp_path_factory) -> Path:
    """π0-FAST converted with its tokenizers but neither statistics nor a robot action dim, as a newcomer does."""
    return convert_openpi(OPENPI / "pi0_fast", "pi0_fast", tmp_path_factory.mktemp("fast") / "pi0_fast", progress=False,
                          tokenizer=TOKENIZER, fast_tokenizer=FAST)


def _copy(folder, tmp_path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / Path(folder).name))


# ---- pi --help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["convert", "--help"], ["export", "--help"]])
def test_the_overview_helps_import_neither_torch_nor_any_job(argv):
    heavy = ("torch", "transformers", "numpy", "conversion", "modeling_pi", "processing_pi", "serving_pi",
             "training_pi", "demo_pi")
    script = (f"import sys, pi_cli\ntry:\n    pi_cli.main({argv!r})\nexcept SystemExit as exit_:\n    assert exit_.code == 0\n"
              f"print(sorted(name for name in sys.modules if name.split('.')[0] in {heavy!r}))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "JOB" in result.stdout or "SOURCE" in result.stdout or "TARGET" in result.stdout


@pytest.mark.parametrize("job, shown", [
    (["convert", "openpi"], "--dtype {float32,bfloat16} default: float32"),
    (["demo"], "--episodes EPISODES default: 20"),
    (["serve"], "--host HOST default: 127.0.0.1"),
    (["train"], "--learning-rate LEARNING_RATE default: 2.5e-05"),
    (["convert", "lerobot"], "--checkpoint"),
    (["convert", "transformers-pi0"], "--image-keys"),
    (["export", "lerobot"], "--allow-custom-sizes"),
    (["push"], "--dry-run"),
    (["generate"], "--state V1,V2,..."),
    (["info"], "--json"),
])
def test_every_job_help_shows_its_defaults(capsys, job, shown):
    text = _help(capsys, *job)
    assert shown in text
    assert "default: None" not in text and "default: False" not in text


def test_a_help_that_names_its_default_gets_no_second_one(capsys):
    text = _help(capsys, "convert", "openpi")
    assert "prompt length (default: 48 π0, 200 π0.5, 250 FAST) --dtype" in text


# ---- negative numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["-0.5,0.2,-1e-3", "-1", "-.5", "-0.5, 0.2"])
def test_a_negative_state_is_a_value_not_an_option(state):
    args = pi_cli.build_parser().parse_args(["generate", "--model", "m", "--image", "a=b.png", "--prompt", "p",
                                             "--state", state, "--seed", "-3"])
    assert args.state == state and args.seed == -3


def test_options_are_still_options_after_a_negative_state(capsys):
    with pytest.raises(SystemExit) as exit_:
        pi_cli.main(["generate", "--model", "m", "--image", "a=b.png", "--prompt", "p", "--state", "-0.5", "--bogus"])
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("argv, usage", [
    (["serve", "--model", "m", "--camera", "scene=a", "wrist=b"], "usage: pi serve "),  # --camera takes one value
    (["convert", "openpi", "--checkpoint", "c", "--output", "o", "--bogus"], "usage: pi convert openpi "),
])
def test_an_unknown_argument_is_said_with_the_jobs_own_usage(capsys, argv, usage):
    with pytest.raises(SystemExit) as exit_:
        pi_cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(usage) and f"unrecognized arguments: {argv[-1]}" in err, err


def test_pi_generate_takes_a_state_that_starts_negative(policy_folder, tmp_path, capsys):
    folder = policy_folder("pi05")
    rng = np.random.default_rng(0)
    images = {camera: rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for camera in CAMERAS[:2]}
    flags = []
    for camera, image in images.items():
        Image.fromarray(image).save(tmp_path / f"{camera}.png")
        flags += ["--image", f"{camera}={tmp_path / f'{camera}.png'}"]
    state = -np.linspace(0.5, 0.1, ROBOT_DIM)
    code, out, err = _pi(capsys, "generate", "--model", folder, "--device", "cpu", *flags, "--prompt", "pick",
                         "--state", ",".join(map(str, state)), "--num-steps", 2, "--seed", 1)
    assert code == 0, err
    expected = pipeline("robotics", model=folder, device="cpu")(images=images, prompt="pick", state=state, num_steps=2,
                                                                 seed=1)
    np.testing.assert_array_equal(np.array(json.loads(out)["actions"], dtype=np.float32), expected["actions"])


def test_a_hub_id_whose_org_is_a_folder_here_is_looked_up_but_named_as_a_likely_typo(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "model").mkdir(parents=True)
    check_source("runs/modle")  # still a valid Hub id: a repository may share its organisation's name with a folder
    assert capsys.readouterr().err == ("--model runs/modle: no such folder here, though runs/ is one; looking for "
                                       "runs/modle on the Hub.\n")
    check_source("runs/model")
    check_source("lerobot/pi05_base")  # no folder lerobot/ here: a plain Hub id, said nothing about
    assert capsys.readouterr().err == ""


# ---- post_process unpacks --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["pi0", "pi05", "pi0_fast"])
def test_post_process_unpacks_into_actions_and_valid(policy_folder, variant):
    processor = PiProcessor.from_pretrained(policy_folder(variant))
    generated = torch.zeros(2, 4, 32) if variant != "pi0_fast" else torch.tensor([[5, 6, 7], [5, 6, 7]])
    out = processor.post_process(generated)
    actions, valid = out
    assert isinstance(out, PiActionOutput) and isinstance(actions, torch.Tensor) and isinstance(valid, torch.Tensor)
    assert actions.shape[0] == 2 and actions.shape[-1] == ROBOT_DIM and valid.shape == (2,)
    assert actions is out.actions is out["actions"] is out[0] and valid is out.valid is out["valid"] is out[1]
    with pytest.raises(KeyError, match="holds actions, valid"):
        out["action"]


# ---- PiProcessor.from_pretrained(**settings) --------------------------------------------------------------


def test_from_pretrained_settings_replace_the_saved_ones(policy_folder):
    folder = policy_folder("pi0")
    saved = PiProcessor.from_pretrained(folder)
    assert saved.robot_action_dim is None and saved.norm_stats is not None
    chunk = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(0))
    for loader in (PiProcessor.from_pretrained, AutoProcessor.from_pretrained):
        processor = loader(folder, robot_action_dim=5, norm_mode="quantile", max_token_len=40)
        assert (processor.robot_action_dim, processor.norm_mode, processor.max_token_len) == (5, "quantile", 40)
        expected = saved.norm_stats.actions.unnormalize(chunk.double().numpy(), "quantile")[..., :5]
        np.testing.assert_allclose(processor.post_process(chunk).actions.numpy(), expected, rtol=1e-6)
    raw = PiProcessor.from_pretrained(folder, norm_stats=None)
    assert raw.norm_stats is None and torch.equal(raw.post_process(chunk).actions, chunk)
    from_file = PiProcessor.from_pretrained(folder, norm_stats=str(STATS))
    assert from_file.norm_stats.to_dict() == NormStats.from_json(STATS).to_dict()


def test_from_pretrained_refuses_what_it_cannot_apply(policy_folder):
    folder = policy_folder("pi0")
    with pytest.raises(TypeError, match="robot_actoin_dim.*robot_action_dim"):
        AutoProcessor.from_pretrained(folder, robot_actoin_dim=5)
    with pytest.raises(TypeError, match="subfolder"):
        PiProcessor.from_pretrained(folder, subfolder="x")
    with pytest.raises(ValueError, match="more than the model's action_dim=32"):
        PiProcessor.from_pretrained(folder, robot_action_dim=40)
    with pytest.raises(ValueError, match="positive whole number"):
        PiProcessor.from_pretrained(folder, robot_action_dim=0)
    # what the Auto classes and pipeline() pass for the model does not concern the processor
    loaded = PiProcessor.from_pretrained(folder, trust_remote_code=True, _from_auto=True, dtype=torch.bfloat16,
                                         device_map="cpu", revision=None)
    assert loaded.to_dict() == PiProcessor.from_pretrained(folder).to_dict()


def test_the_fast_snippet_runs_once_the_folder_is_completed(fast_folder, tmp_path):
    folder = _copy(fast_folder, tmp_path)
    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(images={"base_0_rgb": np.zeros((30, 40, 3), np.uint8)}, prompt="fold the towel",
                       state=np.zeros(ROBOT_DIM))
    tokens = model.generate_actions(**inputs, max_new_tokens=8, temperature=0.0,
                                    allowed_token_ids=processor.action_token_ids())
    with pytest.raises(ValueError, match="robot_action_dim=N"):
        processor.post_process(tokens)
    processor = AutoProcessor.from_pretrained(folder, robot_action_dim=ROBOT_DIM, norm_stats=NormStats.from_json(STATS))
    actions, valid = processor.post_process(tokens)
    assert actions.shape == (1, model.config.action_horizon, ROBOT_DIM) and valid.dtype == torch.bool
    auto_map = json.loads((folder / "processor_config.json").read_text())["auto_map"]
    processor.save_pretrained(folder)
    reloaded = AutoProcessor.from_pretrained(folder)
    assert reloaded.robot_action_dim == ROBOT_DIM and reloaded.norm_stats.to_dict() == processor.norm_stats.to_dict()
    assert json.loads((folder / "processor_config.json").read_text())["auto_map"] == auto_map  # remote code still loads


# ---- pi convert openpi --norm-stats / --robot-action-dim ----------------------------------------------------


def _lerobot_stats(path: Path) -> Path:
    """The fixture statistics in LeRobot's meta/stats.json layout."""
    stats = NormStats.from_json(STATS).to_dict()
    path.write_text(json.dumps({"observation.state": stats["state"], "action": stats["actions"]}))
    return path


def test_convert_takes_statistics_and_robot_action_dim(tmp_path, capsys):
    output = tmp_path / "fast"
    code, _, err = _pi(capsys, "convert", "openpi", "--checkpoint", OPENPI / "pi0_fast", "--output", output,
                       "--tokenizer", TOKENIZER, "--fast-tokenizer", FAST, "--norm-stats", _lerobot_stats(tmp_path / "stats.json"),
                       "--robot-action-dim", 6)
    assert code == 0, err
    processor = AutoProcessor.from_pretrained(output)
    assert processor.robot_action_dim == 6
    assert processor.norm_stats.to_dict() == NormStats.from_json(STATS).to_dict()
    fallback = processor.post_process(torch.tensor([[5, 6, 7]]))  # decodes to 6 dims; 7-dim statistics un-normalise them
    expected = NormStats.from_json(STATS).actions.unnormalize(np.zeros((1, processor.action_horizon, 7)), "quantile")[..., :6]
    assert not fallback.valid.any()
    np.testing.assert_allclose(fallback.actions.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--norm-stats", STATS], "--norm-stats builds the processor, which also needs --tokenizer"),
    (["--robot-action-dim", 7, "--asset-id", "x"], "--asset-id and --robot-action-dim build the processor"),
    (["--fast-tokenizer", FAST], "--fast-tokenizer builds the processor, which also needs --tokenizer"),
    (["--tokenizer", STATS.parent], f"--tokenizer {STATS.parent}: no such file"),  # a folder, not the model file
    (["--max-token-len", 0], "--max-token-len must be at least 1, got 0"),  # not the checkpoint's fault
    (["--action-horizon", -2], "--action-horizon must be at least 1, got -2"),
    (["--tokenizer", TOKENIZER, "--norm-stats", STATS, "--asset-id", "x"], "pass one"),
    (["--tokenizer", TOKENIZER, "--norm-stats", "missing.json"], "missing.json"),
    (["--tokenizer", TOKENIZER, "--norm-stats", TOKENIZER], "Cannot read the statistics"),
    (["--tokenizer", TOKENIZER, "--robot-action-dim", 0], "positive whole number"),
    (["--tokenizer", TOKENIZER, "--robot-action-dim", 33], "more than the model's action_dim=32"),
])
def test_convert_refuses_flags_it_cannot_apply(tmp_path, capsys, extra, message):
    code, _, err = _pi(capsys, "convert", "openpi", "--checkpoint", OPENPI / "pi0", "--output", tmp_path / "out", *extra)
    assert code == 1 and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda stats: stats["actions"]["mean"].__setitem__(0, float("nan")),
     "'actions' statistics: mean is NaN in dim 0; normalising with it would give"),
    (lambda stats: stats["state"].__setitem__("std", stats["state"]["std"][:5]),
     "'state' statistics: the statistics disagree on the dims (mean has 7, std has 5, q01 has 7, q99 has 7 values)"),
])
def test_convert_refuses_statistics_that_would_give_nan_or_not_fit_a_state(tmp_path, capsys, damage, message):
    stats = json.loads(STATS.read_text())
    damage(stats["norm_stats"])
    (tmp_path / "stats.json").write_text(json.dumps(stats))  # json writes NaN, as numpy-based writers do
    code, _, err = _pi(capsys, "convert", "openpi", "--checkpoint", OPENPI / "pi0", "--output", tmp_path / "out",
                       "--tokenizer", TOKENIZER, "--norm-stats", tmp_path / "stats.json")
    assert code == 1 and message in err, err  # before: written, then NaN actions or a broadcasting error
    assert not (tmp_path / "out").exists()


def test_convert_names_the_flag_or_file_at_fault(tmp_path, capsys):
    code, _, err = _pi(capsys, "convert", "openpi", "--checkpoint", DROID, "--config", "pi0_droid", "--tokenizer",
                       TOKENIZER, "--output", tmp_path / "out")  # a π0.5 checkpoint: not "--variant", never given
    assert code == 1 and "--config pi0_droid is for a pi0 checkpoint, but the checkpoint is a pi05 checkpoint" in err, err
    robot = tmp_path / "robot.json"
    robot.write_text(json.dumps({"robot": {"cameras": {"base_0_rgb": "image"}, "state_keys": ["state"]},
                                 "action_horizon": 0}))
    code, _, err = _pi(capsys, "convert", "openpi", "--checkpoint", DROID, "--robot", robot, "--tokenizer", TOKENIZER,
                       "--output", tmp_path / "out")  # not "the checkpoint's shapes"
    assert code == 1 and f"{robot}: action_horizon must be a whole number of at least 1, got 0" in err, err
    (tmp_path / "a_file").touch()
    code, _, err = _pi(capsys, "convert", "openpi", "--checkpoint", OPENPI / "pi0", "--output", tmp_path / "a_file" / "out")
    assert code == 1 and f"{tmp_path / 'a_file'} is a file, so no folder can be made there" in err, err  # not a traceback
    assert not (tmp_path / "out").exists()


def test_a_policy_config_keeps_its_robots_action_dims(tmp_path, capsys):
    code, _, err = _pi(capsys, "convert", "openpi", "--checkpoint", DROID, "--config", "pi05_droid", "--tokenizer",
                       TOKENIZER, "--robot-action-dim", 7, "--output", tmp_path / "out")
    assert code == 1 and "drop --robot-action-dim" in err


@pytest.mark.parametrize("source, folder, message", [
    ("lerobot", OPENPI / "pi0", "is an openpi (orbax) checkpoint, not a LeRobot policy folder: convert it with pi convert openpi"),
    ("transformers-pi05", FIXTURES / "lerobot" / "pi05" / "pretrained_model",
     "is a LeRobot policy folder, not a transformers PI05 folder: convert it with pi convert lerobot"),
    ("openpi", FIXTURES / "lerobot" / "pi0" / "pretrained_model",
     "is a LeRobot policy folder, not an openpi (orbax) checkpoint: convert it with pi convert lerobot"),
    ("openpi", Path(__file__).resolve().parents[1] / "demo_pi" / "model",
     "is a π folder already: AutoModel.from_pretrained loads it as it is"),
])
def test_convert_names_the_command_for_a_folder_of_another_source(tmp_path, capsys, source, folder, message):
    code, _, err = _pi(capsys, "convert", source, "--checkpoint", folder, "--output", tmp_path / "out")
    assert code == 1 and message in err, err
    assert not (tmp_path / "out").exists()


# ---- pi info ------------------------------------------------------------------------------------------------


def _info(capsys, folder) -> dict:
    code, out, err = _pi(capsys, "info", folder, "--json")
    assert code == 0, err
    return json.loads(out)


def test_info_of_a_quantized_folder_counts_the_models_parameters_and_names_the_quantization(converted, tmp_path, capsys):
    from transformers import TorchAoConfig

    torchao = pytest.importorskip("torchao.quantization")
    folder = converted("pi05")
    AutoModel.from_pretrained(folder, quantization_config=TorchAoConfig(torchao.Int8WeightOnlyConfig())).save_pretrained(
        tmp_path / "int8")
    info = _info(capsys, tmp_path / "int8")  # torchao stores a quantized weight in parts: values, scales, zero points
    assert info["weights"]["parameters"] == _info(capsys, folder)["weights"]["parameters"]
    assert info["weights"]["quantization"] == {"method": "torchao", "config": "Int8WeightOnlyConfig"}
    code, out, _ = _pi(capsys, "info", tmp_path / "int8")
    assert code == 0 and "quantized with torchao (Int8WeightOnlyConfig), which loading needs" in out.splitlines()[0]


def test_info_of_a_folder_without_a_processor(converted, capsys):
    folder = converted("pi0")
    info = _info(capsys, folder)
    weights = load_file(folder / "model.safetensors")
    assert info["weights"]["parameters"] == sum(t.numel() for t in weights.values())
    assert info["weights"]["dtypes"] == ["F32"] and info["processor"] is False
    assert (info["variant"], info["cameras"], info["image_size"]) == ("pi0", list(CAMERAS), 224)
    assert info["actions"]["horizon"] == AutoModel.from_pretrained(folder).config.action_horizon
    assert info["state"] == {"robot_dim": None, "robot_dim_from": None, "read_as": "vector", "model_dim": 32}
    assert len(info["problems"]) == 1 and "no processor_config.json" in info["problems"][0]
    code, out, _ = _pi(capsys, "info", folder)
    assert code == 0 and "π0 (variant pi0)" in out and "--tokenizer" in out


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_info_and_the_processor_name_a_missing_tokenizer_file(policy_folder, tmp_path, capsys, name):
    folder = tmp_path / "copied"
    shutil.copytree(policy_folder("pi0"), folder)
    (folder / name).unlink()  # without tokenizer_config.json the processor loaded, then failed at the first prompt
    with pytest.raises(ValueError, match=f"has a processor_config.json but no {name}"):
        PiProcessor.from_pretrained(folder)
    info = _info(capsys, folder)
    assert info["processor"] is False and len(info["problems"]) == 1
    assert "processor_config.json does not load" in info["problems"][0] and f"no {name}" in info["problems"][0]


def test_info_of_a_policy_with_statistics(policy_folder, capsys):
    info = _info(capsys, policy_folder("pi0_fast"))
    assert info["problems"] == [] and info["conventions"] == "openpi" and info["robot"] is None
    assert info["normalisation"] == {"mode": "quantile", "statistics": {"state": ROBOT_DIM, "actions": ROBOT_DIM}}
    assert info["actions"]["robot_dim"] == ROBOT_DIM and info["actions"]["robot_dim_from"] == "statistics"
    assert info["generation"]["max_new_tokens"] == AutoModel.from_pretrained(policy_folder("pi0_fast")).config.max_new_tokens
    assert info["prompt"]["state_in_prompt"] and "State:" in info["prompt"]["format"]


def test_info_names_what_a_fast_folder_lacks_until_it_is_completed(fast_folder, tmp_path, capsys):
    folder = _copy(fast_folder, tmp_path)
    problems = _info(capsys, folder)["problems"]
    assert any("no normalisation statistics" in p for p in problems)
    assert any("cannot decode π0-FAST tokens" in p and "--robot-action-dim" in p for p in problems)
    AutoProcessor.from_pretrained(folder, robot_action_dim=ROBOT_DIM, norm_stats=STATS).save_pretrained(folder)
    info = _info(capsys, folder)
    assert info["problems"] == [] and info["actions"]["robot_dim_from"] == "robot_action_dim"


def test_info_of_a_robot_policy(tmp_path, capsys):
    folder = convert_openpi(DROID, None, tmp_path / "droid", progress=False, tokenizer=TOKENIZER,
                            policy=openpi_config("pi05_droid"))
    info = _info(capsys, folder)
    assert info["robot"]["name"] == "pi05_droid"
    assert info["robot"]["state_keys"] == ["observation/joint_position", "observation/gripper_position"]
    assert (info["actions"]["horizon"], info["actions"]["robot_dim"], info["actions"]["robot_dim_from"]) == (15, 8, "robot")
    code, out, _ = _pi(capsys, "info", folder)
    assert code == 0 and "observation/exterior_image_1_left" in " ".join(out.split())


@pytest.mark.parametrize("name, text, message", [
    ("config.json", '{"model_type": "pi",', "config.json: not readable JSON"),
    ("config.json", "[]", "config.json: holds a JSON list, where an object ({...}) belongs"),
    ("model.safetensors.index.json", '{"weight_map": ', "model.safetensors.index.json: not readable JSON"),
    ("model.safetensors.index.json", "{}", "model.safetensors.index.json: no 'weight_map' from tensor names"),
])
def test_info_and_push_name_a_damaged_json_file(tmp_path, capsys, converted, name, text, message):
    damaged = shutil.copytree(converted("pi05"), tmp_path / "damaged")
    (damaged / name).write_text(text)
    for command in (["info", damaged], ["push", damaged, "me/pi05", "--dry-run"]):  # before: tracebacks
        code, _, err = _pi(capsys, *command)
        assert code == 1 and f"{damaged / name}: " in err and message in err, err


def test_info_refuses_a_folder_that_is_not_a_model(tmp_path, capsys, converted):
    code, _, err = _pi(capsys, "info", tmp_path)
    assert code == 1 and "has no config.json" in err
    lerobot = FIXTURES / "lerobot" / "pi0" / "pretrained_model"  # its config.json is LeRobot's, not a π model's
    code, _, err = _pi(capsys, "info", lerobot)
    assert code == 1 and "is a LeRobot policy folder, not a π folder: convert it with pi convert lerobot" in err
    damaged = shutil.copytree(converted("pi05"), tmp_path / "damaged")
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:5000])  # a cut download
    code, _, err = _pi(capsys, "info", damaged)
    assert code == 1 and "model.safetensors: not a readable safetensors file" in err, err

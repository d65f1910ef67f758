"""LeRobot v3 data, norm stats, the collator and `pi train`, on a dataset written on the fly (H.264 mp4s)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModel, AutoProcessor

import modeling_pi  # noqa: F401
import pi_cli
from conftest import FIXTURES, tiny_config
from lerobot_fixture import CAMERAS, brightness, write_lerobot_dataset
from modeling_pi import PiForActionGeneration
from processing_pi import NormStats, PiImageProcessor, PiProcessor, tokenizer_from_sentencepiece
from training_pi import DatasetError, LeRobotDataset, PiCollator, compute_norm_stats, write_norm_stats
from training_pi.train import check_one_job

CAMERA_MAP = {CAMERAS[0]: "base_0_rgb", CAMERAS[1]: "left_wrist_0_rgb"}
MAP_ARGS = ["--camera-map", *(f"{k}={v}" for k, v in CAMERA_MAP.items())]
HORIZON = 8


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return write_lerobot_dataset(tmp_path_factory.mktemp("lerobot") / "ds")


def _processor(variant="pi05", stats=None, fast=None, max_token_len=48):
    return PiProcessor(PiImageProcessor(size=28), tokenizer_from_sentencepiece(FIXTURES / "processor" / "tokenizer.model"),
                       action_tokenizer=fast, variant=variant, image_keys=list(CAMERA_MAP.values()),
                       max_token_len=max_token_len, norm_stats=stats)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny π0.5 and its processor, saved as `pi convert` would."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    PiForActionGeneration(tiny_config("pi05", image_keys=list(CAMERA_MAP.values()), action_horizon=HORIZON,
                                      max_token_len=48)).save_pretrained(folder)
    _processor().save_pretrained(folder)
    return folder


# ---- data -------------------------------------------------------------------------------------------


def test_samples_hold_frame_t_and_the_chunk_from_the_same_episode(dataset_root):
    dataset = LeRobotDataset(dataset_root, HORIZON, CAMERA_MAP)
    frames = pd.read_parquet(dataset_root / "data" / "chunk-000" / "file-000.parquet")
    assert len(dataset) == len(frames) == 60
    for t in (0, 15, 19, 20, 59):
        sample, row = dataset[t], frames.iloc[t]
        episode, frame = int(row["episode_index"]), int(row["frame_index"])
        for c, camera in enumerate(CAMERA_MAP.values()):  # H.264 at crf 10: within a few grey levels
            assert abs(float(sample["images"][camera].mean()) - brightness(episode, frame, c)) < 3
        np.testing.assert_array_equal(sample["state"], row["observation.state"])
        end = int(frames.index[frames["episode_index"] == episode].max())
        steps = np.minimum(np.arange(t, t + HORIZON), end)
        np.testing.assert_array_equal(sample["actions"], np.stack(frames["action"].iloc[steps]))
        np.testing.assert_array_equal(sample["action_is_pad"], np.arange(t, t + HORIZON) > end)
        assert sample["prompt"] == ("pick up the cube" if episode % 2 == 0 else "place the cube in the bowl")


def test_datasets_with_images_in_the_parquet_files_work_too(tmp_path):
    root = write_lerobot_dataset(tmp_path / "ds", lengths=(6, 5), images_in_parquet=True)
    assert not (root / "videos").exists()
    dataset = LeRobotDataset(root, HORIZON, CAMERA_MAP)
    sample = dataset[7]  # episode 1, frame 1
    for c, camera in enumerate(CAMERA_MAP.values()):
        assert sample["images"][camera].shape == (64, 64, 3)
        assert (sample["images"][camera] == brightness(1, 1, c)).all()  # PNG: lossless


def test_norm_stats_are_computed_over_every_frame_and_written_in_both_formats(dataset_root, tmp_path):
    stats = compute_norm_stats(LeRobotDataset(dataset_root, HORIZON, CAMERA_MAP))
    actions = np.stack(pd.read_parquet(dataset_root / "data" / "chunk-000" / "file-000.parquet")["action"])
    np.testing.assert_allclose(stats.actions.mean, actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.actions.q99, np.quantile(actions, 0.99, axis=0), rtol=1e-6)
    write_norm_stats(stats, tmp_path)
    for name in ("norm_stats.json", "stats.json"):
        reread = NormStats.from_json(tmp_path / name)
        np.testing.assert_allclose(reread.state.q01, stats.state.q01)
        np.testing.assert_allclose(reread.actions.std, stats.actions.std)


def test_collator_gives_float32_model_inputs(dataset_root, model_folder):
    dataset = LeRobotDataset(dataset_root, HORIZON, CAMERA_MAP)
    processor = _processor(stats=compute_norm_stats(dataset))
    batch = PiCollator(processor)([dataset[t] for t in (0, 19, 33)])
    assert batch["pixel_values"].dtype == batch["actions"].dtype == torch.float32
    assert batch["actions"].shape == (3, HORIZON, 32) and batch["action_is_pad"].shape == (3, HORIZON)
    assert batch["action_is_pad"][1].sum() == HORIZON - 1
    out = AutoModel.from_pretrained(model_folder)(**batch)
    assert torch.isfinite(out.loss)
    # what a Trainer left of the samples without remove_unused_columns=False (the model's forward names no images)
    with pytest.raises(ValueError, match="lack images, prompt: .*remove_unused_columns=False"):
        PiCollator(processor)([{"state": dataset[0]["state"], "actions": dataset[0]["actions"]}])


def test_collator_asks_pi0_fast_for_the_loss_without_logits(dataset_root):
    from processing_pi import FastActionTokenizer

    dataset = LeRobotDataset(dataset_root, HORIZON, CAMERA_MAP)
    fast = FastActionTokenizer.from_pretrained(FIXTURES / "processor" / "fast_tokenizer")
    processor = _processor("pi0_fast", stats=compute_norm_stats(dataset), fast=fast, max_token_len=64)
    batch = PiCollator(processor)([dataset[t] for t in (0, 19, 33)])
    assert batch["output_logits"] is False and (batch["labels"] != -100).any()
    torch.manual_seed(0)
    model = PiForActionGeneration(tiny_config("pi0_fast", image_keys=list(CAMERA_MAP.values()), max_token_len=64))
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.logits is None
    torch.testing.assert_close(out.losses, model(**{**batch, "output_logits": True}).losses)


EXECUTED = "action.executed"


def _with_executed_actions(root: Path, destination: Path, dims: int | None = None) -> Path:
    """A copy of the dataset with a feature of what the robot executed: the commanded action plus a drift that
    differs per frame (with `dims`, a feature of that many values instead)."""
    root = shutil.copytree(root, destination)
    path = root / "data" / "chunk-000" / "file-000.parquet"
    frames = pd.read_parquet(path)
    width = dims or len(frames["action"].iloc[0])
    frames[EXECUTED] = [np.resize(action, width) + np.float32(0.01 * t) for t, action in enumerate(frames["action"])]
    frames.to_parquet(path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"][EXECUTED] = {"dtype": "float32", "shape": [width]}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    return root


def test_samples_hold_the_prefix_feature_over_the_chunks_steps(dataset_root, tmp_path):
    root = _with_executed_actions(dataset_root, tmp_path / "ds")
    frames = pd.read_parquet(root / "data" / "chunk-000" / "file-000.parquet")
    dataset = LeRobotDataset(root, HORIZON, CAMERA_MAP, prefix_key=EXECUTED)
    for t in (0, 15, 19):  # 15 and 19: chunks running past the first episode's end (frame 19)
        sample = dataset[t]
        steps = np.minimum(np.arange(t, t + HORIZON), 19)
        np.testing.assert_array_equal(sample["prefix_actions"], np.stack(frames[EXECUTED].iloc[steps]))
        np.testing.assert_array_equal(sample["actions"], np.stack(frames["action"].iloc[steps]))
    assert "prefix_actions" not in LeRobotDataset(root, HORIZON, CAMERA_MAP)[0]
    same = LeRobotDataset(root, HORIZON, CAMERA_MAP, prefix_key="action")[15]  # the default, named
    np.testing.assert_array_equal(same["prefix_actions"], same["actions"])
    with pytest.raises(DatasetError, match="no 'action.missing' feature"):
        LeRobotDataset(root, HORIZON, CAMERA_MAP, prefix_key="action.missing")
    wrong = _with_executed_actions(dataset_root, tmp_path / "wrong", dims=5)
    with pytest.raises(DatasetError, match="'action.executed' has shape \\[5\\]"):
        LeRobotDataset(wrong, HORIZON, CAMERA_MAP, prefix_key=EXECUTED)


def test_collator_normalises_the_prefix_actions_as_the_actions(dataset_root, tmp_path):
    root = _with_executed_actions(dataset_root, tmp_path / "ds")
    dataset = LeRobotDataset(root, HORIZON, CAMERA_MAP, prefix_key=EXECUTED)
    processor = _processor(stats=compute_norm_stats(dataset))
    samples = [dataset[t] for t in (0, 19, 33)]
    batch = PiCollator(processor)(samples)
    as_actions = PiCollator(processor)([{**s, "actions": s["prefix_actions"]} for s in samples])["actions"]
    assert batch["prefix_actions"].dtype == torch.float32
    torch.testing.assert_close(batch["prefix_actions"], as_actions, rtol=0, atol=0)
    assert not torch.equal(batch["prefix_actions"], batch["actions"])


# ---- bad datasets -----------------------------------------------------------------------------------


def _damage(root: Path, damage: str) -> str:
    if damage == "missing camera video":
        (root / "videos" / CAMERAS[1] / "chunk-000" / "file-000.mp4").unlink()
        return f"{CAMERAS[1]}.*file-000.mp4: missing"
    if damage == "action dim mismatch":
        info = json.loads((root / "meta" / "info.json").read_text())
        info["features"]["action"]["shape"] = [5]
        (root / "meta" / "info.json").write_text(json.dumps(info))
        return "file-000.parquet.*'action' has 3 dims, info.json says 5"
    if damage == "unknown camera":
        info = json.loads((root / "meta" / "info.json").read_text())
        del info["features"][CAMERAS[0]]
        (root / "meta" / "info.json").write_text(json.dumps(info))
        return f"info.json: no camera '{CAMERAS[0]}'"
    data, episodes = root / "data" / "chunk-000" / "file-000.parquet", root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pd.read_parquet(episodes)
    if damage == "episode bounds":  # episode 0 said to end 3 frames into episode 1 (20 frames long)
        table.loc[0, "dataset_to_index"] += 3
        table.loc[1, "dataset_from_index"] += 3
        table.to_parquet(episodes)
        return ("file-000.parquet: the frame at index 20 is of episode 1, but .*meta/episodes puts index 20 in episode 0 "
                "\\(3 frames disagree\\)")
    if damage == "unlisted episode":
        table.drop(index=2).to_parquet(episodes)
        return "file-000.parquet: frames are of episode 2 \\(the first at index 34\\), which .*meta/episodes does not list"
    if damage == "lost data file":  # episode 3's frames said to lie in a file that is not there
        table.loc[3, "data/file_index"] = 1
        table.to_parquet(episodes)
        return "chunk-000/file-001.parquet: missing \\(the frames of episode 3\\)"
    if damage == "unknown task":
        pd.DataFrame({"task_index": [0]}, index=pd.Index(["pick up the cube"], name="task")).to_parquet(
            root / "meta" / "tasks.parquet")
        return "file-000.parquet: frames are of task 1 \\(the first at index 20\\), which .*tasks.parquet does not list"
    if damage == "corrupt data file":
        data.write_bytes(data.read_bytes()[:3000])
        return "file-000.parquet: not a readable parquet file"
    if damage == "no frames":
        pd.read_parquet(data).iloc[:0].to_parquet(data)
        return "data: no frames"
    raise AssertionError(damage)


@pytest.mark.parametrize("damage", ["missing camera video", "action dim mismatch", "unknown camera", "episode bounds",
                                    "unlisted episode", "lost data file", "unknown task", "corrupt data file", "no frames"])
def test_bad_datasets_stop_with_an_error_naming_the_file_and_the_problem(dataset_root, tmp_path, damage):
    root = shutil.copytree(dataset_root, tmp_path / "ds")
    message = _damage(root, damage)
    with pytest.raises(DatasetError, match=message):
        LeRobotDataset(root, HORIZON, CAMERA_MAP)


def test_an_image_camera_without_its_column_is_named(tmp_path):
    root = write_lerobot_dataset(tmp_path / "ds", images_in_parquet=True)
    data = root / "data" / "chunk-000" / "file-000.parquet"
    pd.read_parquet(data).drop(columns=[CAMERAS[1]]).to_parquet(data)
    with pytest.raises(DatasetError, match=f"data: the frames have no '{CAMERAS[1]}' column, though info.json declares "
                                           "it an image camera"):
        LeRobotDataset(root, HORIZON, CAMERA_MAP)


def test_a_corrupt_video_names_the_file(dataset_root, tmp_path):
    root = shutil.copytree(dataset_root, tmp_path / "ds")
    video = root / "videos" / CAMERAS[0] / "chunk-000" / "file-000.mp4"
    video.write_bytes(video.read_bytes()[:200])
    with pytest.raises(DatasetError, match=f"{video.name}: "):
        LeRobotDataset(root, HORIZON, CAMERA_MAP)[30]


def test_a_camera_the_model_does_not_have_is_refused(dataset_root):
    with pytest.raises(DatasetError, match="not one of the model's cameras"):
        LeRobotDataset(dataset_root, HORIZON, {CAMERAS[0]: "top"}, image_keys=["base_0_rgb"])


# ---- pi train ----------------------------------------------------------------------------------------


def _log(output: Path) -> list[float]:
    state = json.loads(max(output.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1])).read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_pi_train_lora_halves_the_loss_within_200_steps_and_saves_a_loadable_model(dataset_root, model_folder, tmp_path,
                                                                                   monkeypatch):
    output = tmp_path / "run"
    monkeypatch.chdir(model_folder.parent)  # --model as a relative path
    code = pi_cli.main(["train", "--model", model_folder.name, "--dataset", str(dataset_root), "--output", str(output),
                        "--lora", "--steps", "200", "--batch-size", "8", "--learning-rate", "3e-3", "--warmup-steps", "10",
                        "--logging-steps", "10", "--save-steps", "200", *MAP_ARGS])
    assert code == 0
    losses = _log(output)
    assert len(losses) == 20 and min(losses[-5:]) < 0.5 * losses[0], losses
    assert (output / "loss_curve.png").stat().st_size > 0
    adapter = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(model_folder.resolve())  # found from any folder
    for name in ("norm_stats.json", "stats.json"):
        assert (output / "norm_stats" / name).is_file()
    card = ModelCard.load(output / "README.md")  # ready for `pi push`: card and remote code
    assert card.data.pipeline_tag == "robotics" and "Fine-tuned with `pi train`" in card.text and "200 steps, LoRA" in card.text
    assert json.loads((output / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_pi.PiForActionGeneration"
    assert (output / "modeling_pi.py").is_file()

    model = AutoModel.from_pretrained(output).eval()  # adapters merged in
    processor = AutoProcessor.from_pretrained(output)
    sample = LeRobotDataset(dataset_root, HORIZON, CAMERA_MAP)[3]
    inputs = processor(images=sample["images"], prompt=sample["prompt"], state=sample["state"])
    with torch.no_grad():
        actions = processor.post_process(model.generate_actions(**inputs, generator=torch.Generator().manual_seed(0))).actions
    assert actions.shape == (1, HORIZON, 3)  # the robot's 3 action dims, in its units


def test_pi_train_refuses_a_quantized_model_before_anything_is_written(dataset_root, model_folder, tmp_path, capsys):
    from transformers import TorchAoConfig

    torchao = pytest.importorskip("torchao.quantization")
    quantized = AutoModel.from_pretrained(model_folder, quantization_config=TorchAoConfig(torchao.Int8WeightOnlyConfig()))
    quantized.save_pretrained(tmp_path / "int8")
    AutoProcessor.from_pretrained(model_folder).save_pretrained(tmp_path / "int8")
    for mode in ("--lora", "--full"):  # before: LoRA crashed at its first save, --full with transformers' traceback
        code = pi_cli.main(["train", "--model", str(tmp_path / "int8"), "--dataset", str(dataset_root), "--output",
                            str(tmp_path / "run"), "--steps", "1", "--batch-size", "2", mode, *MAP_ARGS])
        assert code == 1
        assert "--model" in (err := capsys.readouterr().err) and "fine-tuning takes float weights" in err
        assert not (tmp_path / "run").exists()


def test_pi_train_from_a_hub_model_carries_its_license_and_lineage(dataset_root, model_folder, tmp_path):
    """--model as a Hub id, read offline from the Hub cache as `from_pretrained` reads it; its card too."""
    repo = tmp_path / "hf_home" / "hub" / "models--org--tiny-pi05"
    shutil.copytree(model_folder, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}

    def train(output: Path) -> subprocess.CompletedProcess:
        command = [Path(sys.executable).parent / "pi", "train", "--model", "org/tiny-pi05", "--dataset", dataset_root,
                   "--output", output, "--steps", "1", "--batch-size", "2", "--save-steps", "1", "--full", *MAP_ARGS]
        return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=600, env=env)

    result = train(tmp_path / "without_card")  # the repo has no README: said, and no license claimed
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the card of org/tiny-pi05 could not be read" in result.stdout
    card = ModelCard.load(tmp_path / "without_card" / "README.md")
    assert card.data.license is None and card.data.base_model == "org/tiny-pi05"

    ModelCard("---\nlicense: gemma\n---\n# A tiny π0.5\n").save(repo / "snapshots" / ("0" * 40) / "README.md")
    result = train(tmp_path / "with_card")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "could not be read" not in result.stdout
    card = ModelCard.load(tmp_path / "with_card" / "README.md")
    assert card.data.license == "gemma" and card.data.base_model == "org/tiny-pi05"


@pytest.mark.parametrize("variant", ["pi0", "pi0_fast"])
def test_pi_train_runs_the_other_variants(dataset_root, tmp_path, variant):
    from processing_pi import FastActionTokenizer

    torch.manual_seed(0)
    config = tiny_config(variant, image_keys=list(CAMERA_MAP.values()), action_horizon=HORIZON, max_token_len=64)
    PiForActionGeneration(config).save_pretrained(tmp_path / "model")
    fast = FastActionTokenizer.from_pretrained(FIXTURES / "processor" / "fast_tokenizer") if variant == "pi0_fast" else None
    _processor(variant, fast=fast, max_token_len=64).save_pretrained(tmp_path / "model")
    code = pi_cli.main(["train", "--model", str(tmp_path / "model"), "--dataset", str(dataset_root),
                        "--output", str(tmp_path / "run"), "--steps", "4", "--batch-size", "4", "--logging-steps", "1",
                        "--save-steps", "4", "--full", "--freeze-vision", "--gradient-checkpointing", *MAP_ARGS])
    assert code == 0
    losses = _log(tmp_path / "run")
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert AutoModel.from_pretrained(tmp_path / "run").config.variant == variant


def test_pi_train_bf16_runs_on_a_machine_without_gpus(dataset_root, model_folder, tmp_path, monkeypatch):
    # transformers refuses bf16 where no GPU has it unless the run is told it is on the CPU: pi train tells it so
    from training_pi import train

    monkeypatch.setattr(train, "on_cpu_only", lambda: True)  # as on this machine, on any machine
    code = pi_cli.main(["train", "--model", str(model_folder), "--dataset", str(dataset_root), "--output",
                        str(tmp_path / "run"), "--steps", "2", "--batch-size", "2", "--logging-steps", "1",
                        "--save-steps", "2", "--learning-rate", "1e-2", "--warmup-steps", "0", "--full", "--bf16", *MAP_ARGS])
    assert code == 0
    assert all(np.isfinite(_log(tmp_path / "run")))
    trained, initial = (AutoModel.from_pretrained(folder).state_dict() for folder in (tmp_path / "run", model_folder))
    assert all(weight.dtype == torch.float32 for weight in trained.values())  # autocast: the weights stay float32
    assert max((trained[k] - initial[k]).abs().max().item() for k in initial) > 1e-3


def test_pi_train_resumes_from_its_last_checkpoint(dataset_root, model_folder, tmp_path):
    common = ["train", "--model", str(model_folder), "--dataset", str(dataset_root), "--output", str(tmp_path / "run"),
              "--batch-size", "4", "--logging-steps", "1", "--save-steps", "3", "--warmup-steps", "0", *MAP_ARGS]
    assert pi_cli.main([*common, "--steps", "3"]) == 0
    assert pi_cli.main([*common, "--steps", "5", "--resume"]) == 0
    losses = _log(tmp_path / "run")
    assert len(losses) == 5  # steps 1-3 from the first run, 4-5 after resuming


def test_pi_train_resuming_with_other_trained_weights_says_so(dataset_root, model_folder, tmp_path, capsys):
    common = ["train", "--model", str(model_folder), "--dataset", str(dataset_root), "--output", str(tmp_path / "run"),
              "--batch-size", "2", "--save-steps", "1", "--full", *MAP_ARGS]
    assert pi_cli.main([*common, "--steps", "1", "--freeze-vision"]) == 0
    assert pi_cli.main([*common, "--steps", "2", "--resume"]) == 1  # the vision tower would train now
    err = capsys.readouterr().err
    assert "--resume" in err and "covers other weights" in err and "--freeze-vision" in err


def test_pi_train_with_rtc_max_delay_saves_a_model_that_keeps_the_previous_actions(dataset_root, model_folder, tmp_path,
                                                                                    capsys):
    common = ["train", "--model", str(model_folder), "--dataset", str(dataset_root), "--batch-size", "4",
              "--logging-steps", "1", "--save-steps", "2", "--steps", "2", "--full", *MAP_ARGS]
    assert pi_cli.main([*common, "--output", str(tmp_path / "long"), "--rtc-max-delay", str(HORIZON)]) == 1
    assert "--rtc-max-delay" in capsys.readouterr().err and not (tmp_path / "long").exists()
    assert pi_cli.main([*common, "--output", str(tmp_path / "run"), "--rtc-max-delay", "2"]) == 0
    model = AutoModel.from_pretrained(tmp_path / "run").eval()
    assert model.config.rtc_max_delay == 2
    processor = AutoProcessor.from_pretrained(tmp_path / "run")
    sample = LeRobotDataset(dataset_root, HORIZON, CAMERA_MAP)[3]
    inputs = processor(images=sample["images"], prompt=sample["prompt"], state=sample["state"])
    previous = torch.randn(1, HORIZON, model.config.action_dim)
    with torch.no_grad():
        chunk = model.generate_actions(**inputs, prev_actions=previous, inference_delay=2, execution_horizon=2)
    assert torch.equal(chunk[:, :2], previous[:, :2])

    further = ["train", "--model", str(tmp_path / "run"), *common[3:]]  # trained on as it was trained, and said
    capsys.readouterr()
    assert pi_cli.main([*further, "--output", str(tmp_path / "again")]) == 0
    assert "this run trains with clean action prefixes of 0 to 2 steps" in capsys.readouterr().out
    assert AutoModel.from_pretrained(tmp_path / "again").config.rtc_max_delay == 2
    assert pi_cli.main([*further, "--output", str(tmp_path / "plain"), "--rtc-max-delay", "0"]) == 0
    assert AutoModel.from_pretrained(tmp_path / "plain").config.rtc_max_delay == 0
    assert "this run trains with" not in capsys.readouterr().out


def test_pi_train_trains_clean_prefixes_on_the_feature_it_is_given(dataset_root, model_folder, tmp_path, capsys,
                                                                   monkeypatch):
    root = _with_executed_actions(dataset_root, tmp_path / "ds")
    common = ["train", "--model", str(model_folder), "--dataset", str(root), "--batch-size", "4",
              "--logging-steps", "1", "--save-steps", "2", "--steps", "2", "--full", "--rtc-prefix-key", EXECUTED, *MAP_ARGS]
    assert pi_cli.main([*common, "--output", str(tmp_path / "alone")]) == 1
    assert "--rtc-max-delay" in capsys.readouterr().err and not (tmp_path / "alone").exists()
    batches = []  # what the model is trained on
    forward = PiForActionGeneration.forward
    monkeypatch.setattr(PiForActionGeneration, "forward", lambda self, **batch: batches.append(batch) or forward(self, **batch))
    assert pi_cli.main([*common, "--output", str(tmp_path / "run"), "--rtc-max-delay", "2"]) == 0
    assert len(batches) == 2 and all(batch["prefix_actions"].shape == batch["actions"].shape for batch in batches)
    assert not any(torch.equal(batch["prefix_actions"], batch["actions"]) for batch in batches)  # the feature's values
    assert AutoModel.from_pretrained(tmp_path / "run").config.rtc_max_delay == 2


def test_pi_train_with_knowledge_insulation_trains_both_losses_and_saves_a_pi05_that_samples(dataset_root, model_folder,
                                                                                            tmp_path, capsys):
    common = ["train", "--model", str(model_folder), "--dataset", str(dataset_root), "--batch-size", "4",
              "--logging-steps", "1", "--save-steps", "2", "--steps", "2", "--full", *MAP_ARGS]
    assert pi_cli.main([*common, "--output", str(tmp_path / "no_fast"), "--knowledge-insulation"]) == 1
    assert "--fast-tokenizer" in capsys.readouterr().err
    fast = FIXTURES / "processor" / "fast_tokenizer"
    assert pi_cli.main([*common, "--output", str(tmp_path / "run"), "--knowledge-insulation", "--fast-tokenizer", str(fast)]) == 0
    assert all(np.isfinite(_log(tmp_path / "run")))
    model = AutoModel.from_pretrained(tmp_path / "run").eval()
    assert model.config.knowledge_insulation
    processor = AutoProcessor.from_pretrained(tmp_path / "run")
    sample = LeRobotDataset(dataset_root, HORIZON, CAMERA_MAP)[3]
    inputs = processor(images=sample["images"], prompt=sample["prompt"], state=sample["state"])
    with torch.no_grad():
        actions = processor.post_process(model.generate_actions(**inputs, generator=torch.Generator().manual_seed(0))).actions
    assert actions.shape == (1, HORIZON, 3) and torch.isfinite(actions).all()

    further = ["train", "--model", str(tmp_path / "run"), *common[3:]]  # trained on as it was trained, and said
    capsys.readouterr()
    assert pi_cli.main([*further, "--output", str(tmp_path / "again")]) == 0
    assert "this run trains with knowledge insulation" in capsys.readouterr().out
    assert AutoModel.from_pretrained(tmp_path / "again").config.knowledge_insulation
    assert AutoProcessor.from_pretrained(tmp_path / "again").knowledge_insulation
    assert pi_cli.main([*further, "--output", str(tmp_path / "plain"), "--no-knowledge-insulation"]) == 0
    assert not AutoModel.from_pretrained(tmp_path / "plain").config.knowledge_insulation
    assert not AutoProcessor.from_pretrained(tmp_path / "plain").knowledge_insulation


def test_bad_dataset_makes_pi_train_exit_non_zero(dataset_root, model_folder, tmp_path, capsys):
    root = shutil.copytree(dataset_root, tmp_path / "ds")
    (root / "meta" / "stats.json").unlink()
    code = pi_cli.main(["train", "--model", str(model_folder), "--dataset", str(root), "--output", str(tmp_path / "o"),
                        "--steps", "1", *MAP_ARGS])
    assert code != 0 and "stats.json" in capsys.readouterr().err


TOP, WRIST = MAP_ARGS[1:]  # the dataset's two cameras, as the model calls them


@pytest.mark.parametrize("flags, message", [
    (["--steps", "-5"], "--steps must be at least 1, got -5"),  # the Trainer took it for 3 epochs
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--warmup-steps", "-3"], "--warmup-steps must be at least 0, got -3"),
    (["--logging-steps", "0"], "--logging-steps must be at least 1, got 0"),
    (["--learning-rate", "-1"], "--learning-rate must be a positive number, got -1.0"),
    (["--camera-map"], "--camera-map takes DATASET_KEY=MODEL_KEY pairs, got none"),
    (["--camera-map", TOP, TOP.split("=")[0] + "=left_wrist_0_rgb"],
     "--camera-map names the dataset key observation.images.top twice"),
    (["--camera-map", TOP, WRIST.split("=")[0] + "=base_0_rgb"], "--camera-map names the model camera base_0_rgb twice"),
    (["--model", "MISSING"], "--model MISSING: no such folder (nor a Hub id"),  # an absolute path: no Hub lookup
    (["--knowledge-insulation", "--fast-tokenizer", "MISSING"], "--fast-tokenizer MISSING: no such folder"),
])
def test_bad_options_stop_pi_train_before_it_writes_anything(dataset_root, model_folder, tmp_path, capsys, flags,
                                                             message):
    missing = str(tmp_path / "missing")
    args = ["train", "--model", str(model_folder), "--dataset", str(dataset_root), "--output", str(tmp_path / "o"),
            "--steps", "2", *MAP_ARGS, *(missing if flag == "MISSING" else flag for flag in flags)]
    assert pi_cli.main(args) == 1
    assert f"pi train: error: {message.replace('MISSING', missing)}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_task_too_long_for_the_prompt_stops_pi_train_before_the_first_step(dataset_root, model_folder, tmp_path, capsys):
    root = shutil.copytree(dataset_root, tmp_path / "ds")
    tasks = pd.read_parquet(root / "meta" / "tasks.parquet")
    tasks.index = pd.Index([name if i else "pick up the red cup " * 20 for i, name in enumerate(tasks.index)], name="task")
    tasks.to_parquet(root / "meta" / "tasks.parquet")
    code = pi_cli.main(["train", "--model", str(model_folder), "--dataset", str(root), "--output", str(tmp_path / "o"),
                        "--steps", "2", *MAP_ARGS])
    err = capsys.readouterr().err
    assert code == 1 and "task 0 ('pick up the red cup pick up" in err and "more than max_token_len=48" in err, err
    assert not (tmp_path / "o").exists()


def test_the_prompt_check_tries_each_task_with_the_state_that_writes_it_longest(dataset_root, model_folder, tmp_path,
                                                                                capsys):
    # a budget that the first frame of task 0 fits exactly, and a frame of the same task whose state bins have more
    # digits does not: the run stops before its first step, not at the batch that holds that frame
    from training_pi import dataset_norm_stats

    dataset = LeRobotDataset(dataset_root, HORIZON, CAMERA_MAP)
    processor = AutoProcessor.from_pretrained(model_folder)
    processor = processor.replace(norm_stats=dataset_norm_stats(dataset, processor.norm_mode), max_token_len=200)
    frames = dataset.frames.select_columns(["task_index", "observation.state"])[:]
    of_task = [state for task, state in zip(frames["task_index"], frames["observation.state"]) if task == 0]
    lengths = [sum(processor(images={"base_0_rgb": np.zeros((8, 8, 3), np.uint8)}, prompt=dataset.tasks[0],
                             state=state)["attention_mask"][0].tolist()) for state in of_task]
    assert max(lengths) > lengths[0]
    folder = shutil.copytree(model_folder, tmp_path / "model")
    AutoModel.from_pretrained(folder, max_token_len=lengths[0]).save_pretrained(folder)
    processor.replace(max_token_len=lengths[0], norm_stats=None).save_pretrained(folder)
    code = pi_cli.main(["train", "--model", str(folder), "--dataset", str(dataset_root), "--output", str(tmp_path / "o"),
                        "--steps", "2", *MAP_ARGS])
    err = capsys.readouterr().err
    assert code == 1 and "task 0" in err and f"more than max_token_len={lengths[0]}" in err, err


def test_two_cpu_processes_over_gloo_end_with_identical_weights(dataset_root, model_folder, tmp_path):
    output = tmp_path / "ddp"
    # accelerate's DDP launcher (torchrun underneath). Without a GPU, ACCELERATE_USE_CPU makes the processes one
    # multi-CPU job over gloo; without it each would train alone on the same batches, and both save the folder
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(Path(__file__).with_name("ddp_train_worker.py")),
               "--model", str(model_folder), "--dataset", str(dataset_root), "--output", str(output), "--steps", "4",
               "--batch-size", "2", "--logging-steps", "1", "--save-steps", "100", "--learning-rate", "1e-2", *MAP_ARGS]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((output / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["world_size"] == 2 and "gloo" in r["backend"] for r in records), records
    assert [r["trainer"] for r in records] == [{"processes": 2, "index": 0}, {"processes": 2, "index": 1}]  # one job
    assert records[0]["weights"] == records[1]["weights"]


def test_processes_the_trainer_does_not_join_into_one_job_are_refused(monkeypatch):
    alone = SimpleNamespace(world_size=1)  # the TrainingArguments of a process that joined no job
    monkeypatch.setenv("WORLD_SIZE", "2")  # what a launcher of two processes sets
    with pytest.raises(RuntimeError, match="2 processes were launched, but the Trainer sees 1.*ACCELERATE_USE_CPU"):
        check_one_job(alone)
    check_one_job(SimpleNamespace(world_size=2))
    monkeypatch.delenv("WORLD_SIZE")
    check_one_job(alone)  # a single process is one job


# ---- faults and bad input (issue 31) ------------------------------------------------------------------


def _train_args(model_folder, dataset_root, output, *extra) -> list[str]:
    return ["train", "--model", str(model_folder), "--dataset", str(dataset_root), "--output", str(output),
            "--batch-size", "2", "--logging-steps", "1", "--warmup-steps", "0", *MAP_ARGS, *extra]


def _with_bad_value(dataset_root: Path, root: Path, key: str, index: int, value: float) -> Path:
    """A copy of the dataset whose frame `index` holds `value` in the first dim of `key`."""
    root = shutil.copytree(dataset_root, root)
    path = root / "data" / "chunk-000" / "file-000.parquet"
    frames = pd.read_parquet(path)
    vector = np.array(frames.at[index, key], dtype=np.float32)
    vector[0] = value
    frames.at[index, key] = vector
    frames.to_parquet(path)
    return root


@pytest.mark.parametrize("stats", ["stats.json", "--recompute-stats"])
@pytest.mark.parametrize("key, value", [("observation.state", np.inf), ("action", np.nan)])
def test_a_non_finite_frame_stops_pi_train_naming_file_episode_and_frame(dataset_root, model_folder, tmp_path, capsys,
                                                                         stats, key, value):
    root = _with_bad_value(dataset_root, tmp_path / "ds", key, 37, value)  # episode 2 starts at index 34
    output = tmp_path / "run"
    extra = ["--recompute-stats"] if stats == "--recompute-stats" else []
    code = pi_cli.main(_train_args(model_folder, root, output, "--steps", "1", *extra))
    error = capsys.readouterr().err
    where = f"{root / 'data' / 'chunk-000' / 'file-000.parquet'}: episode 2, frame 3 (index 37)"
    assert code == 1 and f"pi train: error: {where}: '{key}' is {'inf' if value == np.inf else 'NaN'} in dim 0" in error, error
    assert f"(frames with a non-finite '{key}': 1)" in error
    assert not output.exists()  # nothing trained, nothing written


def test_non_finite_statistics_in_stats_json_are_refused(dataset_root, model_folder, tmp_path, capsys):
    root = shutil.copytree(dataset_root, tmp_path / "ds")
    stats = json.loads((root / "meta" / "stats.json").read_text())
    stats["observation.state"]["std"][2] = float("nan")
    (root / "meta" / "stats.json").write_text(json.dumps(stats))  # json writes NaN, LeRobot's writer too
    code = pi_cli.main(_train_args(model_folder, root, tmp_path / "run", "--steps", "1"))
    error = capsys.readouterr().err
    assert code == 1 and f"pi train: error: {root / 'meta' / 'stats.json'}: 'observation.state' std is NaN in dim 2" in error, error


def test_pi_train_refuses_a_non_empty_output_without_resume_or_overwrite(dataset_root, model_folder, tmp_path, capsys):
    output = tmp_path / "run"
    assert pi_cli.main(_train_args(model_folder, dataset_root, output, "--steps", "2", "--save-steps", "2")) == 0
    (output / "notes.txt").write_text("the user's")
    before = {path: path.read_bytes() for path in output.rglob("*") if path.is_file()}
    code = pi_cli.main(_train_args(model_folder, dataset_root, output, "--steps", "1", "--save-steps", "1"))
    error = capsys.readouterr().err
    assert code == 1 and f"pi train: error: {output}: " in error and "--resume" in error and "--overwrite" in error, error
    assert {path: path.read_bytes() for path in output.rglob("*") if path.is_file()} == before  # nothing touched

    bad = shutil.copytree(dataset_root, tmp_path / "bad")
    (bad / "meta" / "stats.json").unlink()
    assert pi_cli.main(_train_args(model_folder, bad, output, "--steps", "1", "--overwrite")) == 1
    assert {path: path.read_bytes() for path in output.rglob("*") if path.is_file()} == before  # checks come first

    code = pi_cli.main(_train_args(model_folder, dataset_root, output, "--steps", "1", "--save-steps", "1", "--overwrite"))
    assert code == 0
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-1"]  # the old run's are gone
    assert not (output / "notes.txt").exists() and len(_log(output)) == 1


def test_overwrite_never_deletes_the_dataset_or_the_model(dataset_root, model_folder, tmp_path, capsys):
    for folder, inside in ((model_folder, "--model"), (dataset_root, "--dataset")):
        code = pi_cli.main(_train_args(model_folder, dataset_root, folder.parent, "--steps", "1", "--overwrite"))
        error = capsys.readouterr().err
        assert code == 1 and f"holds the {inside} folder" in error, error
        assert (folder / "config.json" if inside == "--model" else folder / "meta" / "info.json").is_file()
    fast = tmp_path / "run" / "my_fast_tokenizer"  # kept in the output of an earlier run
    fast.mkdir(parents=True)
    code = pi_cli.main(_train_args(model_folder, dataset_root, tmp_path / "run", "--steps", "1", "--overwrite",
                                   "--knowledge-insulation", "--fast-tokenizer", str(fast)))
    assert code == 1 and "holds the --fast-tokenizer folder" in capsys.readouterr().err and fast.is_dir()


def test_samples_the_model_cannot_take_stop_pi_train_before_it_writes_anything(dataset_root, tmp_path, capsys):
    narrow = tmp_path / "narrow"  # a π0.5 of 2 action dims; the dataset's actions have 3
    torch.manual_seed(0)
    PiForActionGeneration(tiny_config("pi05", image_keys=list(CAMERA_MAP.values()), action_horizon=HORIZON,
                                      max_token_len=48, action_dim=2)).save_pretrained(narrow)
    _processor().replace(action_dim=2).save_pretrained(narrow)
    assert pi_cli.main(_train_args(narrow, dataset_root, tmp_path / "o", "--steps", "1")) == 1
    assert (f"pi train: error: {dataset_root}: its samples do not fit the model: actions has 3 dims, more than the "
            "model's action_dim=2") in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_model_camera_no_dataset_camera_maps_to_is_named(dataset_root, model_folder, tmp_path, capsys):
    args = _train_args(model_folder, dataset_root, tmp_path / "o", "--steps", "1")
    assert pi_cli.main([*args, "--camera-map", TOP]) == 0  # the last --camera-map counts: the top camera alone
    assert (f"pi train: no camera of {dataset_root} maps to the model's left_wrist_0_rgb: it trains as an absent "
            "camera (masked) throughout.") in capsys.readouterr().out


def test_last_complete_checkpoint_skips_ones_an_interrupted_save_left(tmp_path):
    from training_pi.train import last_complete_checkpoint

    def checkpoint(step, state=True, weights=True):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if weights:
            (folder / "adapter_model.safetensors").write_bytes(b"weights")
        if state is True:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        elif state:
            (folder / "trainer_state.json").write_text(state)
        return folder

    assert last_complete_checkpoint(tmp_path) == (None, [])
    (tmp_path / "checkpoint-final").mkdir()  # not a Trainer checkpoint: left alone
    done = checkpoint(4)
    checkpoint(2)
    killed = [checkpoint(6, state=False),  # killed before the trainer state (written last)
              checkpoint(8, state='{"global_step": 8, "log_hi'),  # killed while writing it
              checkpoint(10, state=False, weights=False)]  # killed right after the folder was made
    assert last_complete_checkpoint(tmp_path) == (done, killed)


KILL_DURING_SAVE = """
import os, sys, time
import transformers
import pi_cli

save_rng_state = transformers.Trainer._save_rng_state
def stall_at_the_second_save(self, output_dir):  # after weights, optimizer and scheduler, before the trainer state
    if self.state.global_step == 4:
        open(sys.argv[1], "w").close()
        time.sleep(600)
    save_rng_state(self, output_dir)
transformers.Trainer._save_rng_state = stall_at_the_second_save
sys.exit(pi_cli.main(sys.argv[2:]))
"""


def test_resume_after_a_kill_during_a_checkpoint_save_continues_from_the_last_complete_one(dataset_root, model_folder,
                                                                                          tmp_path, capsys):
    output, saving = tmp_path / "run", tmp_path / "saving"
    args = _train_args(model_folder, dataset_root, output, "--steps", "4", "--save-steps", "2")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(saving), *args], cwd=repo, env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 300
        while not saving.exists():
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()[-3000:]
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)  # kill -9 in the middle of checkpoint-4's save
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert (output / "checkpoint-4" / "optimizer.pt").is_file() and not (output / "checkpoint-4" / "trainer_state.json").exists()

    assert pi_cli.main([*args, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "checkpoint-4" in printed and "incomplete" in printed and "resuming from" in printed, printed
    assert len(_log(output)) == 4  # steps 1-2 from the killed run's checkpoint-2, 3-4 after resuming
    assert json.loads((output / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    uninterrupted = tmp_path / "uninterrupted"
    assert pi_cli.main(_train_args(model_folder, dataset_root, uninterrupted, "--steps", "4", "--save-steps", "2")) == 0
    assert _log(output) == _log(uninterrupted)  # no step lost or repeated: the same batches, noise and losses
    assert _weights(output) == _weights(uninterrupted)


def test_resume_without_a_complete_checkpoint_starts_afresh_and_says_so(dataset_root, model_folder, tmp_path, capsys):
    output = tmp_path / "run"
    (output / "checkpoint-2").mkdir(parents=True)  # all a kill during the first save left
    (output / "checkpoint-2" / "model.safetensors").write_bytes(b"half")
    assert pi_cli.main(_train_args(model_folder, dataset_root, output, "--steps", "2", "--save-steps", "2", "--resume")) == 0
    printed = capsys.readouterr().out
    assert "no complete checkpoint" in printed and "from step 0" in printed, printed
    assert len(_log(output)) == 2


@pytest.mark.parametrize("mode", ["--lora", "--full"])
def test_resuming_a_finished_run_writes_its_model_again_without_a_step_more(dataset_root, model_folder, tmp_path, mode):
    # the Trainer, resumed at max_steps, would train once more (and again at every --resume)
    output = tmp_path / "run"
    args = _train_args(model_folder, dataset_root, output, mode, "--steps", "2", "--save-steps", "2",
                       "--learning-rate", "1e-2")
    assert pi_cli.main(args) == 0
    finished = (output / "model.safetensors").read_bytes()
    (output / "model.safetensors").unlink()  # as a kill while the final model was written leaves it
    assert pi_cli.main([*args, "--resume"]) == 0
    assert (output / "model.safetensors").read_bytes() == finished
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-2"]


def test_resuming_past_steps_or_with_the_other_weights_is_refused(dataset_root, model_folder, tmp_path, capsys):
    output = tmp_path / "run"
    assert pi_cli.main(_train_args(model_folder, dataset_root, output, "--steps", "2", "--save-steps", "2")) == 0
    assert pi_cli.main(_train_args(model_folder, dataset_root, output, "--steps", "1", "--resume")) == 1
    assert "is at step 2, past --steps 1" in capsys.readouterr().err
    assert pi_cli.main(_train_args(model_folder, dataset_root, output, "--steps", "4", "--resume", "--full")) == 1
    assert "holds LoRA adapters: resume with --lora" in capsys.readouterr().err
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-2"]
    full = tmp_path / "full"
    assert pi_cli.main(_train_args(model_folder, dataset_root, full, "--full", "--steps", "2", "--save-steps", "2")) == 0
    assert pi_cli.main(_train_args(model_folder, dataset_root, full, "--steps", "4", "--resume")) == 1
    assert "holds fully fine-tuned weights: resume with --full" in capsys.readouterr().err


def test_resuming_on_other_inputs_is_refused_and_a_moved_dataset_is_named(dataset_root, model_folder, tmp_path, capsys):
    output = tmp_path / "run"
    run = lambda dataset, *extra: pi_cli.main(_train_args(model_folder, dataset, output, "--save-steps", "2", *extra))  # noqa: E731
    assert run(dataset_root, "--steps", "2") == 0
    other = write_lerobot_dataset(tmp_path / "other", seed=1)  # other frames, so other statistics
    swapped = ["--camera-map", f"{CAMERAS[0]}=left_wrist_0_rgb", f"{CAMERAS[1]}=base_0_rgb"]
    refusals = {(other,): "resume it with the dataset and statistics it started with",
                (dataset_root, "--recompute-stats"): "resume it with the dataset and statistics it started with",
                (dataset_root, *swapped): f"resume it with --camera-map {' '.join(MAP_ARGS[1:])}",
                (dataset_root, "--rtc-max-delay", "2"): "resume it with --rtc-max-delay 0"}
    for args, message in refusals.items():
        capsys.readouterr()
        assert run(*args, "--steps", "4", "--resume") == 1
        assert f"--resume: the run in {output} started with other inputs than these; {message}" in capsys.readouterr().err
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-2"]
    moved = Path(shutil.copytree(dataset_root, tmp_path / "moved"))
    assert run(moved, "--steps", "4", "--resume") == 0
    assert (f"the run started on {dataset_root.resolve()}; it goes on with {moved.resolve()}, whose statistics are the "
            "same") in capsys.readouterr().out


@pytest.mark.parametrize("damaged", ["adapter_model.safetensors", "optimizer.pt", "scheduler.pt"])
def test_resuming_from_a_damaged_checkpoint_names_the_file(dataset_root, model_folder, tmp_path, capsys, damaged):
    output = tmp_path / "run"
    assert pi_cli.main(_train_args(model_folder, dataset_root, output, "--steps", "1")) == 0
    path = output / "checkpoint-1" / damaged
    path.write_bytes(path.read_bytes()[:100])  # as a full disk or a copy cut short leaves it
    capsys.readouterr()
    assert pi_cli.main(_train_args(model_folder, dataset_root, output, "--steps", "2", "--resume")) == 1
    assert (f"--resume: {path} is damaged (") in capsys.readouterr().err
    assert not (output / "checkpoint-2").exists()


def test_resume_keeps_the_runs_learning_rate_and_says_how_more_steps_reshape_its_schedule(dataset_root, model_folder,
                                                                                         tmp_path, capsys):
    output = tmp_path / "run"
    run = lambda *extra: pi_cli.main(_train_args(model_folder, dataset_root, output, "--save-steps", "2", *extra))  # noqa: E731
    assert run("--steps", "4", "--learning-rate", "1e-2") == 0
    shutil.rmtree(output / "checkpoint-4")  # as a kill before the last save leaves the run
    capsys.readouterr()
    # the Trainer would keep 1e-2 (its optimizer and scheduler state), or reshape the steps taken with a warm-up
    assert run("--steps", "4", "--learning-rate", "1e-3", "--resume") == 1
    assert "trains with --learning-rate 0.01" in capsys.readouterr().err
    assert run("--steps", "4", "--learning-rate", "1e-2", "--warmup-steps", "1", "--resume") == 1
    assert "is not the one --warmup-steps 1 gives there" in capsys.readouterr().err
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-2"]

    assert run("--steps", "8", "--learning-rate", "1e-2", "--resume") == 0  # more steps: allowed, and said
    rates = {entry["step"]: entry["learning_rate"] for entry in
             json.loads((output / "checkpoint-8" / "trainer_state.json").read_text())["log_history"] if "learning_rate" in entry}
    cosine = lambda step, steps: 1e-2 * (0.1 + 0.45 * (1 + np.cos(np.pi * (step - 1) / steps)))  # noqa: E731
    assert rates[3] == pytest.approx(cosine(3, 4)) and rates[4] == pytest.approx(cosine(4, 8))
    said = capsys.readouterr().out
    assert f"a schedule of 8 steps from step 4 on ({rates[4]:g} there, {cosine(4, 4):g} in the run's own)" in said, said


def _weights(output: Path) -> dict[str, bytes]:
    """The saved run's weights, adapters apart and merged, as bytes (equal only when bit-identical)."""
    from safetensors.torch import load_file

    tensors = {**load_file(output / "adapter" / "adapter_model.safetensors"), **load_file(output / "model.safetensors")}
    return {name: tensor.numpy().tobytes() for name, tensor in tensors.items()}


def _trained_weights(model_folder, dataset_root, output, seed) -> dict[str, bytes]:
    assert pi_cli.main(_train_args(model_folder, dataset_root, output, "--steps", "3", "--save-steps", "3",
                                   "--learning-rate", "1e-2", "--seed", str(seed))) == 0
    return _weights(output)


def test_the_same_seed_gives_bit_identical_weights_and_another_seed_does_not(dataset_root, model_folder, tmp_path):
    first, again, other = (_trained_weights(model_folder, dataset_root, tmp_path / name, seed)
                           for name, seed in (("first", 7), ("again", 7), ("other", 8)))
    assert first == again
    drawn = [name for name in first if "lora_A" in name]  # initialised at random (lora_B starts at zero)
    assert drawn and all(first[name] != other[name] for name in drawn)

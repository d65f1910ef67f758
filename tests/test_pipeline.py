"""The "robotics" pipeline and `pi generate` on the converted fixture checkpoints: exactly the numbers of
processor -> generate_actions -> post_process written out, for one observation and for a batch."""

import argparse
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, pipeline

from conftest import CAMERAS, ROBOT_DIM
from modeling_pi import PiForActionGeneration
from pipelines_pi import RoboticsPipeline
from processing_pi import PiProcessor
from serving_pi import generate



def _observation(seed: int, cameras=CAMERAS, prompt="pick up the red cup") -> dict:
    """A robot's raw observation: uint8 camera images of any size, a prompt, the state in robot units."""
    rng = np.random.default_rng(seed)
    images = {camera: rng.integers(0, 256, (60 + 10 * i, 80, 3), dtype=np.uint8) for i, camera in enumerate(cameras)}
    return {"images": images, "prompt": prompt, "state": rng.normal(size=ROBOT_DIM)}


def _policy(folder: str, **kwargs) -> RoboticsPipeline:
    return pipeline("robotics", model=folder, device="cpu", **kwargs)  # on CPU, like the direct calls it is compared to


def _direct(folder: str, observations: list[dict], **generate_kwargs):
    """The three calls the pipeline stands for, on the batch of `observations`."""
    model = AutoModel.from_pretrained(folder).eval()
    processor = PiProcessor.from_pretrained(folder)
    images = {camera: [obs["images"].get(camera) for obs in observations] for camera in CAMERAS}
    inputs = processor(images=images, prompt=[obs["prompt"] for obs in observations],
                       state=np.stack([obs["state"] for obs in observations]))
    return processor.post_process(model.generate_actions(**inputs, **generate_kwargs))


def _assert_same(outputs: list[dict], expected):
    assert [out["valid"] for out in outputs] == expected.valid.tolist()
    for out, actions in zip(outputs, expected.actions):
        assert out["actions"].dtype == np.float32 and out["actions"].shape == actions.shape
        np.testing.assert_array_equal(out["actions"], actions.numpy())


def test_the_task_loads_the_model_and_processor_of_a_converted_folder(policy_folder):
    policy = _policy(policy_folder("pi05"))
    assert isinstance(policy, RoboticsPipeline)
    assert isinstance(policy.model, PiForActionGeneration) and isinstance(policy.processor, PiProcessor)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_one_observation_gives_the_actions_of_the_direct_calls(policy_folder, variant):
    folder = policy_folder(variant)
    policy = _policy(folder)
    observation = _observation(0)
    out = policy(**observation, seed=3, num_steps=4)
    assert set(out) == {"actions", "valid"} and out["actions"].shape == (policy.model.config.action_horizon, ROBOT_DIM)
    _assert_same([out], _direct(folder, [observation], generator=torch.Generator().manual_seed(3), num_steps=4))
    # the observation as one positional dict; explicit noise instead of a seed (an array is fine)
    noise = torch.randn(1, policy.model.config.action_horizon, policy.model.config.action_dim)
    out = policy(observation, noise=noise.numpy(), solver="heun", num_steps=2)
    _assert_same([out], _direct(folder, [observation], noise=noise, solver="heun", num_steps=2))
    again = policy(observation=observation, noise=noise, solver="heun", num_steps=2)  # the processor's keyword
    np.testing.assert_array_equal(again["actions"], out["actions"])


def test_a_list_of_observations_is_one_model_batch(policy_folder):
    folder = policy_folder("pi05")
    observations = [_observation(0), _observation(1, CAMERAS[:2], "open the drawer"), _observation(2, CAMERAS[:1])]
    policy = _policy(folder, num_steps=3)  # options given at construction apply to every call
    outputs = policy(observations, seed=0)
    assert isinstance(outputs, list) and len(outputs) == 3
    _assert_same(outputs, _direct(folder, observations, generator=torch.Generator().manual_seed(0), num_steps=3))
    # with batch_size=1 every observation is its own model call, seeded alike
    singles = policy(observations, batch_size=1, seed=0)
    for single, observation in zip(singles, observations):
        np.testing.assert_array_equal(single["actions"], policy(observation, seed=0)["actions"])
    np.testing.assert_array_equal(policy(observations[0], seed=np.int64(0))["actions"], singles[0]["actions"])
    with pytest.raises(ValueError, match="seed must be an integer, got 0.5"):
        policy(observations[0], seed=0.5)
    # noise: one chunk's [H, D] for each observation, or one per observation [N, H, D] (before: both refused)
    config = policy.model.config
    noise = torch.randn(3, config.action_horizon, config.action_dim)
    _assert_same(policy(observations, noise=noise[0]), _direct(folder, observations, noise=noise[0].expand(3, -1, -1), num_steps=3))
    _assert_same(policy(observations, noise=noise), _direct(folder, observations, noise=noise, num_steps=3))
    with pytest.raises(ValueError, match="noise holds 3 chunks for a model batch of 2 observation"):
        policy(observations, noise=noise, batch_size=2)


def test_fast_answers_decode_like_the_direct_calls(policy_folder):
    folder = policy_folder("pi0_fast")
    policy = _policy(folder)
    observations = [_observation(0), _observation(1, prompt="open the drawer")]
    outputs = policy(observations, max_new_tokens=8, temperature=1.0, seed=5)
    _assert_same(outputs, _direct(folder, observations, max_new_tokens=8, temperature=1.0, generator=torch.Generator().manual_seed(5)))
    processor = policy.processor
    fallback = processor.norm_stats.actions.unnormalize(np.zeros((processor.action_horizon, ROBOT_DIM)), processor.norm_mode)
    for out in outputs:
        assert out["actions"].shape == (processor.action_horizon, ROBOT_DIM)
        if not out["valid"]:  # an undecodable answer is flagged, with openpi's fallback: the zero chunk un-normalised
            np.testing.assert_allclose(out["actions"], fallback, rtol=1e-6)


def test_bad_inputs_are_errors_that_name_them(policy_folder, converted):
    with pytest.raises(ValueError, match="processor_config.json"):
        _policy(str(converted("pi05")))  # weights only, no processor
    with pytest.raises(ValueError, match="PiProcessor"):
        RoboticsPipeline(model=AutoModel.from_pretrained(policy_folder("pi05")))
    policy = _policy(policy_folder("pi05"))
    observation = _observation(0)
    with pytest.raises(ValueError, match="prompt"):
        policy(images=observation["images"], state=observation["state"])
    with pytest.raises(ValueError, match="no images"):
        policy(prompt="pick", state=observation["state"])
    with pytest.raises(ValueError, match="one prompt string"):
        policy({**observation, "prompt": ["pick", "place"]})
    with pytest.raises(ValueError, match="Unknown observation field.*actions"):
        policy({**observation, "actions": np.zeros((50, ROBOT_DIM))})
    with pytest.raises(ValueError, match="not both"):
        policy(observation, prompt="pick")
    with pytest.raises(ValueError, match="Empty list"):
        policy([])
    with pytest.raises(ValueError, match="Unknown camera.*top_cam"):
        policy({**observation, "images": {"top_cam": observation["images"]["base_0_rgb"]}})
    with pytest.raises(ValueError, match="seed or generator"):
        policy(observation, seed=0, generator=torch.Generator())


# ---- pi generate ---------------------------------------------------------------------------------


def _generate(*argv) -> int:
    parser = generate.add_arguments(argparse.ArgumentParser(prog="pi generate"))
    return generate.run(parser.parse_args([str(arg) for arg in argv]))


def _camera_files(tmp_path, observation: dict) -> list[str]:
    flags = []
    for camera, image in observation["images"].items():
        Image.fromarray(image).save(tmp_path / f"{camera}.png")
        flags += ["--image", f"{camera}={tmp_path / f'{camera}.png'}"]
    return flags


def test_generate_prints_json_or_saves_npy(policy_folder, tmp_path, capsys):
    folder = policy_folder("pi05")
    observation = _observation(0)
    expected = _policy(folder)(observation, seed=1, num_steps=2)["actions"]
    args = ["--model", folder, "--device", "cpu", *_camera_files(tmp_path, observation), "--prompt", observation["prompt"],
            "--state", ",".join(map(str, observation["state"].tolist())), "--num-steps", 2, "--seed", 1]
    assert _generate(*args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["valid"] is True
    np.testing.assert_array_equal(np.array(printed["actions"], dtype=np.float32), expected)
    assert _generate(*args, "--output", tmp_path / "chunk.npy") == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'chunk.npy'}"
    np.testing.assert_array_equal(np.load(tmp_path / "chunk.npy"), expected)


def test_generate_reports_bad_arguments(policy_folder, tmp_path, capsys):
    folder = policy_folder("pi05")
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(tmp_path / "front.png")
    (tmp_path / "notes.png").write_text("not a picture")
    state = ["--state", ",".join(["0.5"] * ROBOT_DIM)]
    cases = {
        "NAME=FILE": ["--image", str(tmp_path / "front.png"), *state],
        "missing.png: no such file": ["--image", f"base_0_rgb={tmp_path / 'missing.png'}", *state],
        "notes.png: not an image Pillow can read": ["--image", f"base_0_rgb={tmp_path / 'notes.png'}", *state],
        "--num-steps must be at least 1": ["--image", f"base_0_rgb={tmp_path / 'front.png'}", *state, "--num-steps", "0"],
        "--output .*: no folder": ["--image", f"base_0_rgb={tmp_path / 'front.png'}", *state, "--output",
                                   str(tmp_path / "absent" / "chunk.npy")],
        "comma-separated numbers": ["--image", f"base_0_rgb={tmp_path / 'front.png'}", "--state", "0.5,up"],
        "Unknown camera.*top_cam": ["--image", f"top_cam={tmp_path / 'front.png'}", *state],
    }
    for message, argv in cases.items():
        assert _generate("--model", folder, "--prompt", "pick", *argv) == 1
        err = capsys.readouterr().err
        assert re.search(f"pi generate: error: .*{message}", err), err
    fast = ["--model", policy_folder("pi0_fast"), "--prompt", "pick", "--image", f"base_0_rgb={tmp_path / 'front.png'}", *state]
    assert _generate(*fast, "--num-steps", 3) == 1
    assert "--num-steps" in capsys.readouterr().err
    image = ["--prompt", "pick", "--image", f"base_0_rgb={tmp_path / 'front.png'}", *state]
    assert _generate("--model", folder, *image, "--device", "no_such_device") == 1
    assert "pi generate: error: --device no_such_device:" in capsys.readouterr().err
    damaged = shutil.copytree(folder, tmp_path / "damaged")
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:5000])  # a cut download
    assert _generate("--model", damaged, *image) == 1
    assert re.search("pi generate: error: .*damaged: its weights cannot be read", capsys.readouterr().err)


def test_generate_warns_that_a_folder_without_statistics_answers_in_normalised_units(policy_folder, tmp_path, capsys):
    folder = shutil.copytree(policy_folder("pi05"), tmp_path / "raw")
    PiProcessor.from_pretrained(folder, norm_stats=None).save_pretrained(folder)
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(tmp_path / "front.png")
    assert _generate("--model", folder, "--prompt", "pick", "--image", f"base_0_rgb={tmp_path / 'front.png'}",
                     "--state", ",".join(["0.5"] * ROBOT_DIM), "--seed", 0) == 0
    assert "warning: " in (err := capsys.readouterr().err) and "has no normalisation statistics" in err, err


def test_generate_exits_non_zero_on_a_chunk_that_is_not_finite(policy_folder, tmp_path, capsys, monkeypatch):
    folder = policy_folder("pi05")
    observation = _observation(0)
    args = ["--model", folder, *_camera_files(tmp_path, observation), "--prompt", observation["prompt"],
            "--state", ",".join(map(str, observation["state"].tolist()))]
    generate = PiForActionGeneration.generate_actions
    monkeypatch.setattr(PiForActionGeneration, "generate_actions",
                        lambda self, *a, **k: generate(self, *a, **k).index_fill(1, torch.tensor([3]), float("nan")))
    assert _generate(*args, "--output", tmp_path / "chunk.npy") == 1
    assert "NaN or infinite" in capsys.readouterr().err and not (tmp_path / "chunk.npy").exists()
    assert _generate(*args) == 1
    assert json.loads(capsys.readouterr().out)["valid"] is False

"""openpi's released robot policies end to end: a checkpoint as openpi releases it, converted with `--config`,
takes a robot's raw observation (as openpi's clients send it) and answers with the actions openpi's
`Policy.infer` returns (../shared/fixtures/openpi_policies)."""

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from openpi_client import msgpack_numpy
from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor, pipeline

import modeling_pi  # noqa: F401
import pi_cli
from conftest import FIXTURES, PROCESSOR
from conversion.convert_openpi import convert_openpi
from conversion.hf_folder import ConversionError
from conversion.openpi_configs import OPENPI_CONFIGS, PolicyConfig, openpi_config
from processing_pi import ObservationError
from serving_pi import server

POLICIES = FIXTURES / "openpi_policies"
CONFIGS = ["pi0_aloha", "pi05_droid", "pi0_fast_droid", "pi0_libero", "pi05_libero"]


def _fixture(name: str) -> tuple[dict, list[dict], dict]:
    folder = POLICIES / name
    observations = msgpack_numpy.unpackb((folder / "observations.msgpack").read_bytes())
    return json.loads((folder / "fixture.json").read_text()), observations, load_file(folder / "io.safetensors")


def _convert(checkpoint_config: str, output, config: str | None = None, checkpoint=None, **kwargs):
    """The fixture checkpoint of `checkpoint_config` (or a copy at `checkpoint`) converted under `config` (default:
    its own)."""
    fixture = json.loads((POLICIES / checkpoint_config / "fixture.json").read_text())
    fast = PROCESSOR / "fast_tokenizer" if fixture["variant"] == "pi0_fast" else None
    return convert_openpi(checkpoint or POLICIES / checkpoint_config / "checkpoint", None, output, progress=False,
                          tokenizer=PROCESSOR / "tokenizer.model", fast_tokenizer=fast,
                          policy=openpi_config(config or checkpoint_config), **kwargs)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """config name -> its fixture checkpoint converted with `pi convert openpi --config NAME` (once)."""
    folders = {}

    def get(name: str):
        if name not in folders:
            output = tmp_path_factory.mktemp("policies") / name
            fixture = json.loads((POLICIES / name / "fixture.json").read_text())
            args = ["convert", "openpi", "--checkpoint", POLICIES / name / "checkpoint", "--config", name,
                    "--tokenizer", PROCESSOR / "tokenizer.model", "--output", output]
            if fixture["variant"] == "pi0_fast":
                args += ["--fast-tokenizer", PROCESSOR / "fast_tokenizer"]
            assert pi_cli.main([str(arg) for arg in args]) == 0
            folders[name] = output
        return folders[name]

    return get


def _relative_error(actions: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actions - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("name", CONFIGS)
def test_raw_observations_give_openpis_actions(policy, name):
    fixture, observations, io = _fixture(name)
    folder = policy(name)
    config = AutoModel.from_pretrained(folder).config
    assert (config.variant, config.action_horizon, config.max_token_len) == (
        fixture["variant"], fixture["action_horizon"], fixture["max_token_len"])
    assert config.image_keys == fixture["model_image_keys"]
    robot_actions = pipeline("robotics", model=str(folder))
    for i, observation in enumerate(observations):
        noise = {} if config.variant == "pi0_fast" else {"noise": io[f"noise.{i}"].numpy()}
        out = robot_actions(observation, **noise)
        expected = io[f"expected.actions.{i}"].numpy()
        assert out["actions"].shape == expected.shape
        assert _relative_error(out["actions"], expected) < 1e-4, (name, i)


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_the_model_gets_the_inputs_openpi_builds(policy, name):
    """Prompt tokens, state, camera masks and resized images as openpi's transforms made them; π0-FAST decodes the
    same tokens."""
    fixture, observations, io = _fixture(name)
    folder = policy(name)
    model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    for i, observation in enumerate(observations):
        built = {key.removeprefix(f"model_inputs.{i}."): value for key, value in io.items() if key.startswith(f"model_inputs.{i}.")}
        inputs = processor(observation=observation)
        torch.testing.assert_close(inputs["input_ids"][0], built["tokenized_prompt"].long(), rtol=0, atol=0)
        torch.testing.assert_close(inputs["attention_mask"][0], built["tokenized_prompt_mask"], rtol=0, atol=0)
        masks = torch.stack([built[f"image_mask.{camera}"] for camera in fixture["model_image_keys"]])
        torch.testing.assert_close(inputs["pixel_attention_mask"][0], masks, rtol=0, atol=0)
        for c, camera in enumerate(fixture["model_image_keys"]):
            if f"image.{camera}" in built:  # the cameras openpi resized
                image = built[f"image.{camera}"].permute(2, 0, 1).float() / 255 * 2 - 1
                torch.testing.assert_close(inputs["pixel_values"][0, c], image, rtol=0, atol=1e-6)
        if "state" in inputs:
            torch.testing.assert_close(inputs["state"][0], built["state"], rtol=0, atol=1e-5)
        fast = fixture["variant"] == "pi0_fast"
        generated = model.generate_actions(**inputs, **({} if fast else {"noise": io[f"noise.{i}"][None]}))
        if fast:
            expected = io[f"expected.tokens.{i}"].long()
            length = int((expected != 0).sum())  # openpi stops at EOS and leaves zeros after it
            torch.testing.assert_close(generated[0, :length], expected[:length], rtol=0, atol=0)
        out = processor.post_process(generated, observation=observation)
        assert out.valid.tolist() == [not fast]  # random weights never write "Action: "
        assert _relative_error(out.actions[0].double().numpy(), io[f"expected.actions.{i}"].numpy()) < 1e-4


@torch.no_grad()
def test_pi_info_and_the_card_say_pi05_libero_reads_no_state(policy, capsys):
    """openpi's pi05_libero trains without the state in its prompt: the folder says the model does not read it."""
    folder = policy("pi05_libero")
    capsys.readouterr()
    assert pi_cli.main(["info", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"]["read_as"] == "unused"
    assert pi_cli.main(["info", str(folder)]) == 0
    assert "not read by the model (not in its prompt)" in capsys.readouterr().out
    assert "trained without the state in its prompt" in (folder / "README.md").read_text()


def test_a_batch_of_observations_gives_each_its_own_actions(policy):
    """Three ALOHA observations of different image sizes, one without its right wrist camera, in one model call."""
    _, observations, io = _fixture("pi0_aloha")
    folder = policy("pi0_aloha")
    model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    noise = torch.stack([io[f"noise.{i}"] for i in range(len(observations))])
    generated = model.generate_actions(**processor(observation=observations), noise=noise)
    out = processor.post_process(generated, observation=observations)
    for i, actions in enumerate(out.actions.double().numpy()):
        assert _relative_error(actions, io[f"expected.actions.{i}"].numpy()) < 1e-4


@pytest.mark.parametrize("name", ["pi0_aloha", "pi0_libero"])
def test_a_training_chunk_comes_back_as_the_same_commands(policy, name):
    """The robot's own chunk through the training path (converted, made deltas, normalised, padded), read back as
    if the model had generated it, is the chunk again: the two directions of every robot transform agree."""
    _, observations, _ = _fixture(name)
    processor = AutoProcessor.from_pretrained(policy(name))
    chunk = np.random.default_rng(0).uniform(0.2, 0.8, (len(observations), 5, processor.robot.action_dim))
    targets = processor(observation=observations, actions=chunk)["actions"]
    assert targets.shape[-1] == 32 and not np.allclose(targets[..., : chunk.shape[-1]], chunk)
    back = processor.post_process(targets, observation=observations).actions
    np.testing.assert_allclose(back.numpy(), chunk, atol=1e-5)


def test_a_robot_file_declares_what_a_config_does(tmp_path):
    """The documented robot.json example (a LIBERO arm with delta pose actions) converts the π0 LIBERO checkpoint
    into the policy `--config pi0_libero` gives."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "robots.md").read_text()
    example = re.search(r"<!-- robot.json -->\s*```json\n(.*?)```", text, re.S)
    assert example, "docs/robots.md shows a robot.json example"
    (tmp_path / "robot.json").write_text(example.group(1))
    _, observations, io = _fixture("pi0_libero")
    folder = tmp_path / "mine"
    assert pi_cli.main(["convert", "openpi", "--checkpoint", str(POLICIES / "pi0_libero" / "checkpoint"), "--robot",
                        str(tmp_path / "robot.json"), "--tokenizer", str(PROCESSOR / "tokenizer.model"),
                        "--output", str(folder)]) == 0
    robot_actions = pipeline("robotics", model=str(folder))
    out = robot_actions(observations[1], noise=io["noise.1"].numpy())
    assert _relative_error(out["actions"], io["expected.actions.1"].numpy()) < 1e-4


def test_configs_beyond_the_fixtures_follow_openpis_definitions(tmp_path):
    """Other configs over the same checkpoints: a default prompt stands in for a missing one; ALOHA without delta
    actions returns the model's actions converted, not added to the state; π0-FAST on LIBERO shows the black right
    wrist camera unmasked and decodes 10x7 chunks."""
    _, observations, io = _fixture("pi0_aloha")
    towel = pipeline("robotics", model=str(_convert("pi0_aloha", tmp_path / "towel", "pi0_aloha_towel")))
    plain = pipeline("robotics", model=str(_convert("pi0_aloha", tmp_path / "aloha")))
    unprompted = {key: value for key, value in observations[0].items() if key != "prompt"}
    noise = io["noise.0"].numpy()
    np.testing.assert_allclose(towel(unprompted, noise=noise)["actions"],
                               plain({**unprompted, "prompt": "fold the towel"}, noise=noise)["actions"], atol=1e-6)
    with pytest.raises(ObservationError, match="Missing 'prompt'"):
        plain(unprompted, noise=noise)

    sim = pipeline("robotics", model=str(_convert("pi0_aloha", tmp_path / "sim", "pi0_aloha_sim",
                                                    asset_id="trossen")))
    robot = sim.processor.robot
    assert robot.delta_action_mask is None and robot.default_prompt == "Transfer cube"
    absolute, delta = sim(observations[0], noise=noise)["actions"], plain(observations[0], noise=noise)["actions"]
    state = robot.state(observations[0])
    # the same model output, once converted directly and once after adding the state on the joints
    from_model = robot.from_robot(absolute[None], state[None])[0]
    mask = np.array([True] * 6 + [False] + [True] * 6 + [False])
    np.testing.assert_allclose(robot.from_robot(delta[None], state[None])[0], from_model + np.where(mask, state, 0), atol=1e-5)

    _, droid_observations, _ = _fixture("pi0_fast_droid")
    libero = {"observation/image": droid_observations[0]["observation/exterior_image_1_left"],
              "observation/wrist_image": droid_observations[0]["observation/wrist_image_left"],
              "observation/state": np.linspace(-0.5, 0.5, 8), "prompt": "put the bowl on the plate"}
    shutil.copytree(POLICIES / "pi0_fast_droid" / "checkpoint", tmp_path / "fast_libero")
    stats = tmp_path / "fast_libero" / "assets" / "physical-intelligence" / "libero"
    stats.mkdir(parents=True)
    norm = json.loads((POLICIES / "pi0_libero" / "checkpoint" / "assets" / "physical-intelligence" / "libero" /
                       "norm_stats.json").read_text())
    (stats / "norm_stats.json").write_text(json.dumps(norm))
    folder = _convert("pi0_fast_droid", tmp_path / "fast_libero_out", "pi0_fast_libero", checkpoint=tmp_path / "fast_libero")
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(observation=libero)
    assert inputs["pixel_attention_mask"].tolist() == [[True, True, True]]
    assert (inputs["pixel_values"][0, 2] == -1).all()  # black, and seen
    out = pipeline("robotics", model=str(folder))(libero)
    assert out["actions"].shape == (10, 7)

    # PolaRiS: DROID joint positions, as deltas of the state on the 7 joints (openpi's polaris_config.py)
    for name, (variant, horizon, tokens) in {"pi05_droid_jointpos_polaris": ("pi05", 15, None),  # π0.5's 200
                                             "pi0_fast_droid_jointpos_polaris": ("pi0_fast", 10, 180),
                                             "pi0_droid_jointpos_polaris": ("pi0", 10, 100),
                                             "pi0_droid_jointpos_100k_polaris": ("pi0", 10, 100)}.items():
        config = openpi_config(name)
        assert (config.variant, config.action_horizon, config.max_token_len, config.asset_id) == (variant, horizon, tokens, "droid")
        assert config.robot.delta_action_mask == [True] * 7 + [False] and config.robot.action_dim == 8


def test_pi_serve_drives_openpis_client_and_chunk_broker(policy):
    """`pi serve --model OUT` for an ALOHA and a DROID policy: openpi's client and ActionChunkBroker get the
    pipeline's actions step by step, and the policy's metadata on connect."""
    for name in ("pi0_aloha", "pi05_droid"):
        fixture, observations, _ = _fixture(name)
        folder = policy(name)
        args = server.add_arguments(argparse.ArgumentParser()).parse_args(
            ["--model", str(folder), "--port", "0", "--seed", "7", "--device", "cpu"])
        built = server.build_policy(args)
        config = built.model.config
        noise = torch.randn(1, config.action_horizon, config.action_dim, generator=torch.Generator().manual_seed(7))
        expected = pipeline("robotics", model=str(folder))(observations[0], noise=noise)["actions"]
        with server.serve_in_background(built) as running:
            client = WebsocketClientPolicy("127.0.0.1", running.port)
            metadata = client.get_server_metadata()
            for key, value in fixture["server_metadata"].items():
                assert metadata[key] == value
            broker = ActionChunkBroker(client, action_horizon=config.action_horizon)
            steps = np.stack([broker.infer(observations[0])["actions"] for _ in range(config.action_horizon)])
        np.testing.assert_allclose(steps, expected, rtol=0, atol=1e-5)


def test_bad_configs_observations_and_statistics_are_named(tmp_path, capsys, policy):
    code = pi_cli.main(["convert", "openpi", "--checkpoint", str(POLICIES / "pi0_aloha" / "checkpoint"), "--config",
                        "pi0_alooha", "--tokenizer", str(PROCESSOR / "tokenizer.model"), "--output", str(tmp_path / "x")])
    error = capsys.readouterr().err
    assert code == 1 and "Unknown openpi config 'pi0_alooha'" in error
    assert all(name in error for name in OPENPI_CONFIGS) and not (tmp_path / "x").exists()

    _, observations, _ = _fixture("pi05_droid")
    robot_actions = pipeline("robotics", model=str(policy("pi05_droid")))
    for key in ("observation/wrist_image_left", "observation/gripper_position"):
        with pytest.raises(ObservationError, match=re.escape(key)):
            robot_actions({k: v for k, v in observations[0].items() if k != key})

    # as openpi's ALOHA policy: a misspelt wrist camera is refused, not read as a missing one; cam_low is taken
    robot = openpi_config("pi0_aloha").robot
    image = np.zeros((3, 24, 24), np.uint8)
    aloha = {"state": np.zeros(14), "prompt": "fold", "images": {"cam_high": image, "cam_low": image, "cam_left_wrist": image}}
    assert robot.read(aloha)["images"]["right_wrist_0_rgb"] is None
    aloha["images"]["cam_rigth_wrist"] = image
    with pytest.raises(ObservationError, match=re.escape("Unknown image(s) 'images/cam_rigth_wrist'; the robot reads "
                                                         "'images/cam_high', 'images/cam_left_wrist', 'images/cam_low', "
                                                         "'images/cam_right_wrist' there")):
        robot.read(aloha)

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(POLICIES / "pi0_aloha" / "checkpoint", checkpoint)
    stats_file = checkpoint / "assets" / "trossen" / "norm_stats.json"
    stats = json.loads(stats_file.read_text())
    stats["norm_stats"]["state"] = {k: v[:7] for k, v in stats["norm_stats"]["state"].items()}
    stats_file.write_text(json.dumps(stats))
    with pytest.raises(ConversionError, match="'state' statistics cover 7 dims; the robot has 14"):
        convert_openpi(checkpoint, None, tmp_path / "y", progress=False, tokenizer=PROCESSOR / "tokenizer.model",
                       policy=openpi_config("pi0_aloha"))
    stats_file.unlink()
    with pytest.raises(ConversionError, match="(?i)no assets/trossen/norm_stats.json"):
        convert_openpi(checkpoint, None, tmp_path / "y", progress=False, tokenizer=PROCESSOR / "tokenizer.model",
                       policy=openpi_config("pi0_aloha"))
    assert not (tmp_path / "y").exists()
    with pytest.raises(ValueError, match="needs a 'robot' object"):
        PolicyConfig.from_dict({"action_horizon": 10})

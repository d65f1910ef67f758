"""The embedded tabletop task, its expert, the training recipe and the shipped policy (`pi demo`)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

import modeling_pi  # noqa: F401
import pi_cli
from demo_pi.demo import SHIPPED_MODEL, Episode, rollout
from demo_pi.pictures import (ANIMATION_HEADER, ANIMATION_TABLE, HEADER, LAST_FRAME_MS, MARGIN, MISSED, REACHED, TABLE,
                              TITLE, animation_frames, draw, legend_width, panel_size, sheet_size)
from demo_pi.demonstrations import EXECUTED, IMAGE_KEYS, expert_episode, write_demonstrations
from demo_pi.recipe import HELD_OUT_SEEDS_START, init_model_folder, task_tokenizer, train_arguments, train_with
from demo_pi.tabletop import COLORS, IMAGE_SIZE, MAX_SPEED, STEP_BUDGET, Tabletop
from training_pi import LeRobotDataset


def test_episodes_and_images_are_a_function_of_the_seed():
    first, again, other = Tabletop.reset(7), Tabletop.reset(7), Tabletop.reset(8)
    assert first.prompt == again.prompt and all(np.array_equal(first.blocks[c], again.blocks[c]) for c in first.blocks)
    for camera in ("scene", "wrist"):
        image = first.observation()["images"][camera]
        assert image.dtype == np.uint8 and image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert np.array_equal(image, again.observation()["images"][camera])
        assert not np.array_equal(image, other.observation()["images"][camera])
    scene = first.render()
    for color in first.blocks:  # every block is drawn in its colour
        assert (scene == COLORS[color]).all(-1).sum() >= 9
    assert first.prompt == f"move to the {first.target} block" and first.target in first.blocks


def test_the_expert_is_deterministic_and_always_succeeds():
    steps = expert_episode(3)
    again = expert_episode(3)
    assert [a.tolist() for _, a, _ in steps] == [a.tolist() for _, a, _ in again]
    for seed in range(200):
        env = Tabletop.reset(seed)
        while not env.done:
            action = env.expert_action()
            assert np.linalg.norm(action) <= MAX_SPEED + 1e-6
            env.step(action)
        assert env.success and env.steps < STEP_BUDGET


def test_the_wrist_camera_follows_the_end_effector():
    env = Tabletop.reset(11)
    before = env.render_wrist()
    env.step(env.expert_action())
    assert not np.array_equal(before, env.render_wrist())
    ring = (before == (255, 255, 255)).all(-1)  # the end-effector sits at the centre of its own camera
    rows, cols = np.nonzero(ring)
    assert abs(rows.mean() - IMAGE_SIZE / 2) < 2 and abs(cols.mean() - IMAGE_SIZE / 2) < 2


def test_demonstrations_are_a_lerobot_dataset_pi_train_reads(tmp_path):
    root = write_demonstrations(tmp_path / "demos", range(5))
    dataset = LeRobotDataset(root, 8, {"observation.images.scene": "scene", "observation.images.wrist": "wrist"})
    assert len(dataset) == sum(len(expert_episode(seed)) for seed in range(5))
    sample = dataset[0]
    observation, action, _ = expert_episode(0)[0]
    assert sample["prompt"] == observation["prompt"]
    np.testing.assert_array_equal(sample["images"]["scene"], observation["images"]["scene"])
    np.testing.assert_allclose(sample["actions"][0], action)
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 5 and info["codebase_version"] == "v3.0"


def test_demonstrations_record_the_steps_the_robot_executed(tmp_path):
    root = write_demonstrations(tmp_path / "demos", range(3), perturbation=0.3)
    frames = pd.read_parquet(root / "data" / "chunk-000" / "file-000.parquet")
    for _, episode in frames.groupby("episode_index"):
        states, executed = np.stack(episode["observation.state"]), np.stack(episode[EXECUTED])
        # each executed step leads from one frame's state to the next (states are stored in float32)
        np.testing.assert_allclose(executed[:-1], np.diff(states, axis=0), atol=1e-6)
        off = np.linalg.norm(executed - np.stack(episode["action"]), axis=1)
        assert off.mean() > 0.1 * MAX_SPEED  # the perturbation: not the commanded action
        assert (np.linalg.norm(executed, axis=1) <= MAX_SPEED + 1e-6).all()
    exact = write_demonstrations(tmp_path / "exact", range(2))
    frames = pd.read_parquet(exact / "data" / "chunk-000" / "file-000.parquet")
    np.testing.assert_allclose(np.stack(frames[EXECUTED]), np.stack(frames["action"]), atol=1e-6)
    dataset = LeRobotDataset(root, 8, dict(zip(IMAGE_KEYS.values(), IMAGE_KEYS)), prefix_key=EXECUTED)
    assert dataset[0]["prefix_actions"].shape == (8, 2)


def test_the_recipe_trains_real_time_chunking_on_the_executed_actions(tmp_path):
    arguments = train_arguments(tmp_path / "init", tmp_path / "demos", tmp_path / "run", steps=10, rtc_max_delay=3)
    assert arguments[arguments.index("--rtc-max-delay") + 1] == "3"
    assert arguments[arguments.index("--rtc-prefix-key") + 1] == EXECUTED
    assert "--rtc-prefix-key" not in train_arguments(tmp_path / "init", tmp_path / "demos", tmp_path / "run", steps=10)


def test_the_task_tokenizer_knows_every_word_of_the_prompts():
    tokenizer = task_tokenizer()
    for color in COLORS:
        ids = tokenizer.encode(f"Task: move to the {color} block, State: 0 255;\nAction: ", add_special_tokens=False)
        assert tokenizer.unk_token_id not in ids and len(ids) == 16


def _losses(output) -> list[float]:
    state = json.loads(next(output.glob("checkpoint-*/trainer_state.json")).read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_the_recipes_first_training_steps_lower_the_loss(tmp_path):
    dataset = write_demonstrations(tmp_path / "demos", range(40))
    init = init_model_folder(tmp_path / "init")
    arguments = train_arguments(init, dataset, tmp_path / "run", steps=60, batch_size=16, learning_rate=1e-3)
    arguments[arguments.index("--logging-steps") + 1] = "10"
    assert train_with(arguments) == 0
    losses = _losses(tmp_path / "run")
    assert len(losses) == 6 and np.mean(losses[-2:]) < 0.7 * losses[0], losses


@pytest.fixture(scope="module")
def shipped():
    return AutoModel.from_pretrained(str(SHIPPED_MODEL)).eval(), AutoProcessor.from_pretrained(str(SHIPPED_MODEL))


def test_the_shipped_policy_reaches_the_named_block_in_held_out_episodes(shipped):
    model, processor = shipped
    assert model.config.variant == "pi05" and processor.image_keys == ["scene", "wrist"]
    episodes, _ = rollout(model, processor, range(HELD_OUT_SEEDS_START, HELD_OUT_SEEDS_START + 20))
    successes = sum(episode.env.success for episode in episodes)
    assert successes >= 16, f"{successes}/20"


def test_the_shipped_policy_follows_the_prompt_not_a_habit(shipped):
    """Same scene, each block named in turn: the policy must go to a different block each time."""
    model, processor = shipped
    env = Tabletop.reset(HELD_OUT_SEEDS_START + 123)
    generator = torch.Generator().manual_seed(0)
    reached = []
    for color in env.blocks:
        episode = Tabletop(dict(env.blocks), color, env.effector.copy())
        while not episode.done:
            observation = episode.observation()
            inputs = processor(images=observation["images"], prompt=observation["prompt"], state=observation["state"])
            with torch.inference_mode():
                chunk = processor.post_process(model.generate_actions(**inputs, generator=generator)).actions[0].numpy()
            for action in chunk[:4]:
                if not episode.done:
                    episode.step(action)
        reached.append(episode.success)
    assert all(reached), dict(zip(env.blocks, reached))


def test_pi_demo_prints_the_success_rate_and_draws_the_episodes(tmp_path, capsys):
    code = pi_cli.main(["demo", "--episodes", "7", "--output", str(tmp_path / "demo.png"), "--gif", str(tmp_path / "demo.gif")])
    out = capsys.readouterr().out
    assert code == 0 and "episodes reached the named block" in out and "per chunk" in out
    assert Image.open(tmp_path / "demo.png").size == sheet_size(7) == (5 * panel_size()[0], TITLE + 2 * panel_size()[1] + 40)
    gif = Image.open(tmp_path / "demo.gif")
    assert gif.size == panel_size(ANIMATION_TABLE, ANIMATION_HEADER) and gif.size[0] > 2 * 192 and gif.n_frames >= 2


@pytest.mark.parametrize("flags, message", [
    (["--episodes", "0"], "--episodes must be at least 1, got 0"),
    (["--num-steps", "0"], "--num-steps must be at least 1, got 0"),  # not taken for the model's default
    (["--output", "no_such_folder/demo.png"], "--output no_such_folder/demo.png: its folder does not exist"),
    (["--gif", "no_such_folder/demo.gif"], "--gif no_such_folder/demo.gif: its folder does not exist"),
    (["--device", "no_such_device"], "--device no_such_device:"),
    # these ran every episode, then gave a traceback, or ran to a meaningless result
    (["--output", "demo.txt"], "--output demo.txt: the file must be a picture Pillow writes, e.g. .png"),
    (["--output", "."], "--output .: a folder; give a file name"),
    (["--gif", "demo.jpg"], "--gif demo.jpg: the file must be a .gif"),
    (["--seed", "-1"], "--seed must be at least 0, got -1"),
    (["--delay", "40"], "--delay 40: an episode has 40 steps, so no action would run"),
])
def test_pi_demo_refuses_bad_options_before_running_an_episode(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    assert pi_cli.main(["demo", *flags]) == 1
    assert f"pi demo: error: {message}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_recipe_keeps_a_folder_it_did_not_write_and_refuses_counts_of_zero(tmp_path, capsys):
    from demo_pi.recipe import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    for flags, message in ((["--output", str(tmp_path / "run")], "is not an empty folder (an earlier run?); pass --overwrite"),
                           (["--output", str(tmp_path / "new"), "--episodes", "0"], "--episodes must be at least 1, got 0"),
                           (["--output", str(tmp_path / "new"), "--eval-episodes", "0"], "--eval-episodes must be at least 1")):
        with pytest.raises(SystemExit):
            main(flags)
        assert message in capsys.readouterr().err
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine" and not (tmp_path / "new").exists()  # it was deleted


def test_pi_demo_names_a_model_of_other_cameras(tmp_path, capsys, policy_folder):
    assert pi_cli.main(["demo", "--model", str(policy_folder("pi05")), "--output", str(tmp_path / "demo.png")]) == 1
    assert ("reads the cameras base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb; the task's are scene, wrist"
            in capsys.readouterr().err)  # before: a KeyError
    assert not list(tmp_path.iterdir())


def _near(image: Image.Image, box, color, tolerance: int = 40) -> bool:
    """Some pixel in `box` of `image` is within `tolerance` of `color` (text is anti-aliased)."""
    pixels = np.asarray(image.crop(box).convert("RGB")).astype(int)
    return bool((np.abs(pixels - color).max(-1) <= tolerance).any())


def _episode_along_the_edge() -> Episode:
    """A failed episode whose end-effector slid along the table's top edge, where the old sheet hid it."""
    blocks = {"red": np.array([0.125, 0.625]), "green": np.array([0.625, 0.875]), "blue": np.array([0.875, 0.375])}
    env = Tabletop(blocks, "red", np.array([0.9, 0.0]), steps=STEP_BUDGET)
    path = [np.array([x, 0.0]) for x in np.linspace(0.2, 0.9, STEP_BUDGET + 1)]
    return Episode(0, env, path)


def test_the_sheet_shows_a_failed_path_along_the_edge_the_prompt_and_the_outcome():
    failed, reached = _episode_along_the_edge(), Episode(1, Tabletop.reset(1), [])
    while not reached.env.done:
        reached.path.append(reached.env.effector.copy())
        reached.env.step(reached.env.expert_action())
    reached.path.append(reached.env.effector.copy())
    sheet = draw([failed, reached], "title")
    width, height = panel_size()
    # two panels are narrower than the legend: the sheet takes the legend's width (it was cut off at two panels)
    assert sheet.size == sheet_size(2, title="title") == (legend_width(), TITLE + height + 40) and legend_width() > 2 * width
    assert _near(sheet, (legend_width() - 40, sheet.height - 40, legend_width(), sheet.height), (20, 20, 20))  # its end
    long_title = "a title wider than the legend " * 6
    assert draw([failed], long_title).width == sheet_size(1, title=long_title)[0] > legend_width()
    edge_row = TITLE + HEADER + MARGIN  # y = 0 on the first panel's table
    for x in (0.3, 0.5, 0.8):
        assert sheet.getpixel((MARGIN + round(x * TABLE), edge_row)) == MISSED
    assert _near(sheet, (0, TITLE + HEADER // 2, width, TITLE + HEADER), MISSED)  # the outcome, in the path's colour
    assert _near(sheet, (width, TITLE + HEADER // 2, 2 * width, TITLE + HEADER), REACHED)
    assert _near(sheet, (0, TITLE, width, TITLE + HEADER // 2), (20, 20, 20))  # the prompt
    legend = (0, sheet.height - 40, sheet.width, sheet.height)
    assert _near(sheet, legend, REACHED, 0) and _near(sheet, legend, MISSED, 0)


def test_the_animation_draws_the_path_as_it_goes_and_ends_on_the_outcome():
    episode = _episode_along_the_edge()
    frames, durations = animation_frames(episode)
    assert len(frames) == len(durations) == len(episode.path) and durations[-1] == LAST_FRAME_MS > durations[0]
    assert {frame.size for frame in frames} == {panel_size(ANIMATION_TABLE, ANIMATION_HEADER)}
    row = ANIMATION_HEADER + MARGIN
    behind = (MARGIN + round(0.25 * ANIMATION_TABLE), row)  # passed early in the episode
    assert frames[0].getpixel(behind) != frames[len(frames) // 2].getpixel(behind) == (255, 255, 255)
    assert frames[-1].getpixel(behind) == MISSED
    outcome = (0, ANIMATION_HEADER // 2, frames[-1].width, ANIMATION_HEADER)
    assert _near(frames[-1], outcome, MISSED) and not _near(frames[-2], outcome, MISSED)

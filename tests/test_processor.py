"""PiProcessor and its parts against the reference's outputs (fixtures/processor)."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file
from transformers import AutoProcessor

import modeling_pi  # noqa: F401  (registers PiProcessor with AutoProcessor)
from conftest import FIXTURES
from processing_pi import FastActionTokenizer, NormStats, PiImageProcessor, PiProcessor, tokenizer_from_sentencepiece

PROCESSOR = FIXTURES / "processor"
IO = load_file(PROCESSOR / "processor_io.safetensors")
SETUP = json.loads((PROCESSOR / "fixture.json").read_text())
PROMPTS = SETUP["prompts"]


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_from_sentencepiece(PROCESSOR / "tokenizer.model")


@pytest.fixture(scope="module")
def fast():
    return FastActionTokenizer.from_pretrained(PROCESSOR / "fast_tokenizer")


def _processor(tokenizer, variant, fast=None, **kwargs):
    """Fixture states and chunks are already normalised: no statistics."""
    return PiProcessor(PiImageProcessor(size=224), tokenizer, action_tokenizer=fast, variant=variant, **kwargs)


IMAGE = {"base_0_rgb": IO["resize.224x224.input"]}


# ---- text -----------------------------------------------------------------------------------------


def test_sentencepiece_conversion_keeps_the_special_tokens(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert len(tokenizer) == SETUP["vocab_size"]
    assert tokenizer.encode("\n", add_special_tokens=False) == [4]  # "\n" is a piece of its own


def test_a_file_that_is_not_a_sentencepiece_model_is_refused_naming_it(tmp_path):
    for name, data in (("stats.json", (PROCESSOR / "norm_stats.json").read_bytes()), ("empty.model", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"{name}: not a SentencePiece model"):
            tokenizer_from_sentencepiece(tmp_path / name)


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_pi0_prompts(tokenizer, i):
    out = _processor(tokenizer, "pi0", max_token_len=SETUP["pi0_max_len"])(
        images=IMAGE, prompt=PROMPTS[i], state=IO["states"][i], return_tensors="np")
    np.testing.assert_array_equal(out["input_ids"][0], IO[f"pi0.{i}.tokens"])
    np.testing.assert_array_equal(out["attention_mask"][0], IO[f"pi0.{i}.mask"])
    np.testing.assert_allclose(out["state"][0], np.pad(IO["states"][i], (0, 25)))  # padded to action_dim


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_pi05_prompts_carry_the_discretised_state(tokenizer, i):
    out = _processor(tokenizer, "pi05", max_token_len=SETUP["pi05_max_len"])(
        images=IMAGE, prompt=PROMPTS[i], state=IO["states"][i], return_tensors="np")
    np.testing.assert_array_equal(out["input_ids"][0], IO[f"pi05.{i}.tokens"])
    np.testing.assert_array_equal(out["attention_mask"][0], IO[f"pi05.{i}.mask"])
    assert "state" not in out


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_fast_training_and_inference_sequences(tokenizer, fast, i):
    processor = _processor(tokenizer, "pi0_fast", fast, max_token_len=SETUP["fast_max_len"])
    train = processor(images=IMAGE, prompt=PROMPTS[i], state=IO["states"][i], actions=IO["fast.test_chunks"][i],
                      return_tensors="np")
    np.testing.assert_array_equal(train["input_ids"][0], IO[f"fast.{i}.tokens"])
    np.testing.assert_array_equal(train["attention_mask"][0], IO[f"fast.{i}.mask"])
    np.testing.assert_array_equal(train["token_type_ids"][0], IO[f"fast.{i}.ar_mask"])
    np.testing.assert_array_equal(train["labels"][0], np.where(IO[f"fast.{i}.loss_mask"], IO[f"fast.{i}.tokens"], -100))
    infer = processor(images=IMAGE, prompt=PROMPTS[i], state=IO["states"][i], return_tensors="np")
    np.testing.assert_array_equal(infer["input_ids"][0], IO[f"fast_infer.{i}.tokens"])
    np.testing.assert_array_equal(infer["attention_mask"][0], IO[f"fast_infer.{i}.mask"])
    assert "labels" not in infer


def test_a_long_pi0_task_is_cut_with_a_warning_saying_what_went(tokenizer, caplog):
    out = _processor(tokenizer, "pi0", max_token_len=8)(images=IMAGE, prompt=PROMPTS[3], state=np.zeros(7))
    full = _processor(tokenizer, "pi0", max_token_len=200)(images=IMAGE, prompt=PROMPTS[3], state=np.zeros(7))
    assert out["input_ids"].shape == (1, 8) and out["attention_mask"].all()
    assert f"the last {int(full['attention_mask'].sum()) - 8} tokens of the prompt (the newline that closes the task first) cut off" in caplog.text


@pytest.mark.parametrize("variant", ["pi05", "pi0_fast"])
def test_a_cut_that_would_lose_the_state_is_refused(tokenizer, fast, variant):
    from processing_pi.prompts import PromptTooLong

    processor = _processor(tokenizer, variant, fast if variant == "pi0_fast" else None, max_token_len=12, action_horizon=4)
    with pytest.raises(PromptTooLong, match="drop the robot state"):
        processor(images=IMAGE, prompt=PROMPTS[3], state=np.zeros(7))


def test_fast_training_targets_cut_entirely_are_refused_and_partly_are_warned(tokenizer, fast, caplog):
    from processing_pi.prompts import PromptTooLong

    def call(max_len):
        processor = _processor(tokenizer, "pi0_fast", fast, max_token_len=max_len, action_horizon=4)
        return processor(images=IMAGE, prompt="go", state=np.zeros(7), actions=np.ones((4, 7)))

    prefix = int((call(400)["token_type_ids"] == 0).logical_and(call(400)["attention_mask"]).sum())
    with pytest.raises(PromptTooLong, match="leaving none of the"):
        call(prefix)
    out = call(prefix + 2)
    assert (out["labels"] != -100).sum() == 2 and "training target tokens cut off" in caplog.text


def test_settings_that_are_no_size_and_fast_ids_of_another_shape_are_refused(tokenizer, fast):
    for setting in ("max_token_len", "action_dim", "action_horizon"):  # max_token_len=0 became the default, 200
        with pytest.raises(ValueError, match=f"{setting} must be a whole number of at least 1, got 0"):
            _processor(tokenizer, "pi0", **{setting: 0})
    processor = _processor(tokenizer, "pi0_fast", fast, action_horizon=4, robot_action_dim=7)
    ids = torch.zeros(2, 5, dtype=torch.long)
    for wrong in (ids[0], ids[None], ids.float()):  # 1-D: a TypeError; 3-D: two rows merged into one chunk
        with pytest.raises(ValueError, match=r"Expected π0-FAST's generated token ids \[B, T\]"):
            processor.post_process(wrong)


def test_fast_training_chunks_of_another_horizon_are_refused(tokenizer, fast):
    processor = _processor(tokenizer, "pi0_fast", fast, action_horizon=4)
    with pytest.raises(ValueError, match=re.escape("actions holds chunks of 3 steps; the FAST tokens of this model decode to 4")):
        processor(images=IMAGE, prompt="go", state=np.zeros(7), actions=np.ones((3, 7)))  # trained answers no decode
    processor = _processor(tokenizer, "pi0_fast", fast, action_horizon=4, robot_action_dim=7)
    with pytest.raises(ValueError, match=re.escape("chunks of 8 action dims; the FAST tokens of this model decode to 7 "
                                                   "(from its robot_action_dim)")):
        processor(images=IMAGE, prompt="go", state=np.zeros(7), actions=np.ones((4, 8)))


def test_fast_ids_sit_below_tokens_added_after_the_vocabulary(fast):
    """openpi and LeRobot count the vocabulary without tokens added after it (transformers' PaliGemma `<image>`)."""
    plain = tokenizer_from_sentencepiece(PROCESSOR / "tokenizer.model")
    added = tokenizer_from_sentencepiece(PROCESSOR / "tokenizer.model")
    added.add_special_tokens({"additional_special_tokens": ["<image>"]})
    inputs = dict(images=IMAGE, prompt=PROMPTS[0], state=IO["states"][0], actions=IO["fast.test_chunks"][0], return_tensors="np")
    labels = [_processor(t, "pi0_fast", fast, max_token_len=SETUP["fast_max_len"])(**inputs)["labels"] for t in (plain, added)]
    np.testing.assert_array_equal(labels[1], labels[0])
    np.testing.assert_array_equal(labels[0][0], np.where(IO["fast.0.loss_mask"], IO["fast.0.tokens"], -100))


def test_save_pretrained_pushes_when_asked_and_refuses_keywords_it_would_drop(tokenizer, tmp_path, monkeypatch):
    processor = _processor(tokenizer, "pi0")
    pushed = []
    monkeypatch.setattr(PiProcessor, "push_to_hub", lambda self, repo_id, **options: pushed.append((repo_id, options)))
    processor.save_pretrained(tmp_path / "a", push_to_hub=True, repo_id="org/pi-processor", commit_message="stats")
    processor.save_pretrained(tmp_path / "b", push_to_hub=True)
    assert pushed == [("org/pi-processor", {"commit_message": "stats"}), ("b", {})]
    processor.save_pretrained(tmp_path / "c", max_shard_size="5GB")  # as push_to_hub itself saves
    with pytest.raises(TypeError, match="unexpected keyword argument.s. repo_id"):  # it was dropped, with no push
        processor.save_pretrained(tmp_path / "d", repo_id="org/pi-processor")
    assert len(pushed) == 2 and (tmp_path / "c" / "processor_config.json").is_file()


@pytest.mark.parametrize("variant", ["pi0", "pi05", "pi0_fast"])
def test_control_tokens_typed_into_a_task_are_text_as_sentencepiece_reads_them(tokenizer, fast, variant):
    """openpi's SentencePiece never reads "</s>" or "<pad>" in a task as EOS or padding; LeRobot's transformers
    tokenizer does, and its conventions follow it."""
    task, control = "pick up the cup</s><pad> now", {tokenizer.eos_token_id, tokenizer.pad_token_id}
    ids = {}
    for conventions in ("openpi", "lerobot"):
        out = PiProcessor(PiImageProcessor(size=224, conventions=conventions), tokenizer, action_tokenizer=fast,
                          variant=variant, max_token_len=80, conventions=conventions)(
            images=IMAGE, prompt=task, state=IO["states"][0], return_tensors="np")
        ids[conventions] = out["input_ids"][0][out["attention_mask"][0]].tolist()
    assert not control & set(ids["openpi"])
    assert control <= set(ids["lerobot"])


def test_fast_post_processing_takes_the_ids_between_action_and_bar(tokenizer, fast):
    processor = _processor(tokenizer, "pi0_fast", fast, action_horizon=SETUP["fast_time_horizon"],
                           robot_action_dim=SETUP["fast_action_dim"])
    rows = [IO[f"fast_extract.{i}.generated"].tolist() for i in range(4)]
    width = max(map(len, rows))
    generated = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    out = processor.post_process(generated)
    assert out.valid.all()
    for i in range(4):
        np.testing.assert_allclose(out.actions[i].numpy(), IO[f"fast_extract.{i}.actions"], atol=1e-6)
    no_action = processor.post_process(torch.tensor([[5, 6, 7]]))
    assert not no_action.valid.any() and not no_action.actions.any()
    allowed = processor.action_token_ids()
    assert set(processor.tokenizer.encode("Action: ", add_special_tokens=False)) <= set(allowed.tolist())


# ---- normalisation --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["zscore", "quantile"])
def test_normalisation_matches_the_reference(mode):
    stats = NormStats.from_json(PROCESSOR / "norm_stats.json")
    np.testing.assert_allclose(stats.state.normalize(IO["norm.input"], mode), IO[f"norm.{mode}.normalized"], atol=1e-6)
    np.testing.assert_allclose(stats.actions.unnormalize(IO["norm.model_output32"], mode),
                               IO[f"norm.{mode}.unnormalized32"], atol=1e-6)


def test_lerobot_stats_json_is_read(tmp_path):
    openpi = json.loads((PROCESSOR / "norm_stats.json").read_text())["norm_stats"]
    lerobot = {"observation.state": {**openpi["state"], "min": [0] * 7}, "action": openpi["actions"],
               "observation.images.top": {"mean": [[[0.5]]]}}
    (tmp_path / "stats.json").write_text(json.dumps(lerobot))
    stats = NormStats.from_json(tmp_path / "stats.json")
    np.testing.assert_array_equal(stats.state.q99, openpi["state"]["q99"])
    np.testing.assert_array_equal(stats.actions.mean, openpi["actions"]["mean"])


def test_missing_statistics_fail_at_construction(tokenizer):
    stats = NormStats.from_json(PROCESSOR / "norm_stats.json")
    with pytest.raises(ValueError, match="'actions'"):
        _processor(tokenizer, "pi0", norm_stats=NormStats(state=stats.state))
    no_quantiles = NormStats.from_dict({key: {"mean": [0.0] * 7, "std": [1.0] * 7} for key in ("state", "actions")})
    with pytest.raises(ValueError, match="q01"):
        _processor(tokenizer, "pi05", norm_stats=no_quantiles)
    _processor(tokenizer, "pi0", norm_stats=no_quantiles)  # z-score needs no quantiles


def test_state_and_actions_are_normalised_and_padded(tokenizer):
    stats = NormStats.from_json(PROCESSOR / "norm_stats.json")
    processor = _processor(tokenizer, "pi0", norm_stats=stats)
    state, chunk = np.arange(7.0), np.ones((5, 7))
    out = processor(images=IMAGE, prompt="go", state=state, actions=chunk)
    np.testing.assert_allclose(out["state"][0, :7].numpy(), stats.state.normalize(state, "zscore"), rtol=1e-6)
    assert out["state"].shape == (1, 32) and not out["state"][0, 7:].any()
    assert out["actions"].shape == (1, 5, 32) and out["actions"].dtype == torch.float32
    back = processor.post_process(out["actions"])
    np.testing.assert_allclose(back.actions[0].numpy(), chunk, atol=1e-5)  # un-normalised and cut to the robot's 7 dims


# ---- images ---------------------------------------------------------------------------------------


def test_images_are_resized_and_scaled_like_the_reference():
    image_processor = PiImageProcessor(size=224)
    raw = IO["resize.480x640.input"]
    expected = IO["resize.480x640.output"].astype(np.float32).transpose(2, 0, 1) / 255 * 2 - 1
    for given in (raw, Image.fromarray(raw), [Image.fromarray(raw)], np.minimum(raw / 255 + 1e-6, 1.0),  # (255·x is truncated, as in the reference)
                  torch.from_numpy(raw).permute(2, 0, 1)):
        out = image_processor.preprocess(given)["pixel_values"]
        assert out.shape == (1, 3, 224, 224)
        np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_cameras_are_matched_by_name_and_missing_ones_masked(tokenizer):
    processor = _processor(tokenizer, "pi0")
    image = IO["resize.300x200.input"]
    out = processor(images={"left_wrist_0_rgb": np.stack([image, image]), "base_0_rgb": [image, None]},
                    prompt=["a", "b"], state=np.zeros((2, 7)))
    assert out["pixel_attention_mask"].tolist() == [[True, True, False], [False, True, False]]
    assert (out["pixel_values"][1, 0] == -1).all() and (out["pixel_values"][:, 2] == -1).all()  # blank: black
    assert torch.equal(out["pixel_values"][0, 0], out["pixel_values"][0, 1])
    with pytest.raises(ValueError, match=re.escape("No camera given for example(s) [1] of the batch")):
        processor(images={"base_0_rgb": [image, None]}, prompt=["a", "b"], state=np.zeros((2, 7)))  # was acted on
    single = processor(images={"base_0_rgb": image, "left_wrist_0_rgb": None}, prompt="a", state=np.zeros(7))
    assert single["pixel_attention_mask"].tolist() == [[True, False, False]]  # None: absent, as in a list


@pytest.mark.parametrize("images, message", [
    ({"top_cam": IO["resize.224x224.input"]}, "Unknown camera.*top_cam"),
    ({"base_0_rgb": np.zeros((64, 64, 4), np.uint8)}, "base_0_rgb.*3 colour channels"),
    ({"base_0_rgb": np.full((64, 64, 3), 2.0, np.float32)}, r"base_0_rgb.*\[0, 1\]"),
    ({"base_0_rgb": np.zeros((0, 64, 3), np.uint8)}, "base_0_rgb"),
    ({"base_0_rgb": np.zeros((2, 64, 64, 3), np.uint8)}, "base_0_rgb.*2 images"),
    ({"base_0_rgb": np.zeros((1000, 1, 3), np.uint8)}, "base_0_rgb.*1000x1 image is too narrow"),
    ({}, "No camera"),
])
def test_bad_images_name_the_camera_and_the_problem(tokenizer, images, message):
    with pytest.raises(ValueError, match=message):
        _processor(tokenizer, "pi0")(images=images, prompt="go", state=np.zeros(7))


def test_float_range_minus_one_to_one_is_accepted_when_declared():
    image = IO["resize.224x224.input"].astype(np.float32) / 255 * 2 - 1
    out = PiImageProcessor(float_range=(-1, 1)).preprocess(image)["pixel_values"]
    np.testing.assert_allclose(out[0], image.transpose(2, 0, 1), atol=2 / 255)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PiImageProcessor().preprocess(image)
    with pytest.raises(ValueError, match=r"got values in \[0.0, 1.0000001\]"):  # not "[0, 1]", as :g rounds it
        PiImageProcessor().preprocess(np.full((4, 4, 3), [0.0, 0.5, 1.0000001]))


def test_bad_prompt_state_and_actions_are_refused(tokenizer):
    processor = _processor(tokenizer, "pi0")
    for prompt in (b"go", 5, ["go", b"stop"]):
        with pytest.raises(ValueError, match="prompt must be a string or a list of strings, got "):
            processor(images=IMAGE, prompt=prompt, state=np.zeros(7))
    with pytest.raises(ValueError, match="needs the robot state"):
        processor(images=IMAGE, prompt="go")
    with pytest.raises(ValueError, match="NaN"):
        processor(images=IMAGE, prompt="go", state=np.full(7, np.nan))
    with pytest.raises(ValueError, match="action_dim"):
        processor(images=IMAGE, prompt="go", state=np.zeros(40))
    with pytest.raises(ValueError, match="batch size"):
        processor(images=IMAGE, prompt="go", state=np.zeros(7), actions=np.zeros((2, 5, 7)))
    with pytest.raises(ValueError, match="robot's action_dim=40 is more than the model's action_dim=32"):
        _processor(tokenizer, "pi0", robot={"cameras": {"base_0_rgb": "top"}, "state_keys": ["state"], "action_dim": 40})
    stats = NormStats.from_json(PROCESSOR / "norm_stats.json")  # 7 dims
    with pytest.raises(ValueError, match="robot_action_dim=10 is more than the 7 action dims the normalisation statistics"):
        _processor(tokenizer, "pi0", norm_stats=stats, robot_action_dim=10)  # dims 8-10 would stay normalised
    normalising = _processor(tokenizer, "pi0", norm_stats=stats)
    with pytest.raises(ValueError, match="state has 3 dims; the normalisation statistics have 7"):
        normalising(images=IMAGE, prompt="go", state=np.zeros(3))
    with pytest.raises(ValueError, match="actions has 6 dims; the normalisation statistics have 7"):
        normalising(images=IMAGE, prompt="go", state=np.zeros(7), actions=np.zeros((5, 6)))


# ---- saving -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["pi05", "pi0_fast"])
def test_save_and_load_round_trip_through_auto_processor(tmp_path, tokenizer, fast, converted, variant):
    stats = NormStats.from_json(PROCESSOR / "norm_stats.json")
    processor = _processor(tokenizer, variant, fast if variant == "pi0_fast" else None, norm_stats=stats,
                           max_token_len=180, action_horizon=10)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["norm_stats"]["state"]["q01"] == stats.to_dict()["state"]["q01"]  # stats inside processor_config.json
    (tmp_path / "config.json").write_bytes((converted(variant) / "config.json").read_bytes())
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, PiProcessor) and loaded.variant == variant and loaded.max_token_len == 180
    kwargs = {"images": IMAGE, "prompt": PROMPTS[1], "state": np.arange(7.0), "actions": np.ones((10, 7)), "return_tensors": "np"}
    a, b = processor(**kwargs), loaded(**kwargs)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_a_chunk_with_a_non_finite_value_is_not_valid(tokenizer):
    processor = _processor(tokenizer, "pi0")
    chunk = torch.zeros(3, 4, 32)
    chunk[1, 2, 5] = float("nan")
    chunk[2, 0, 0] = float("inf")
    assert processor.post_process(chunk).valid.tolist() == [True, False, False]
    huge = torch.zeros(1, 4, 32, dtype=torch.float64)
    huge[0, 0, 0] = 1e300  # finite in float64, infinite in the float32 the actions are returned in
    assert processor.post_process(huge).valid.tolist() == [False]
    with pytest.raises(ValueError, match=r"\[B, H, 32\] \(the model's output"):  # not the robot's 7 dims, nor cut to them
        processor.post_process(torch.zeros(1, 4, 7))


def test_overriding_the_conventions_switches_the_image_processor_too(tokenizer, tmp_path):
    _processor(tokenizer, "pi0").save_pretrained(tmp_path)
    loaded = PiProcessor.from_pretrained(tmp_path, conventions="lerobot")
    assert loaded.conventions == loaded.image_processor.conventions == "lerobot"
    replaced = loaded.replace(conventions="openpi")
    assert replaced.conventions == replaced.image_processor.conventions == "openpi"

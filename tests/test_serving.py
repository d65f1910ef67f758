"""The policy server driven by openpi's own client package (`openpi-client`), on 127.0.0.1.

The server runs in a thread of this process (its own event loop), except for the shutdown test,
which runs `pi serve` as a process and sends it SIGTERM.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import websockets.sync.client
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from transformers import AutoModel, AutoProcessor

import modeling_pi  # noqa: F401
from conftest import CAMERAS, ROBOT_DIM
from demo_pi.demo import SHIPPED_MODEL
from processing_pi import ObservationError, Robot
from serving_pi import BatchingPolicy, preset
from serving_pi import server as pi_serve
from serving_pi.policy import DEFAULT_MAX_PROMPT_CHARS
from serving_pi.server import serve_in_background
from serving_pi.wire import WireError, packb, unpackb

BIN = Path(sys.executable).parent


def _observation(seed: int, prompt: str = "pick up the red cup") -> dict:
    """What an openpi client sends with the "pi" layout: HWC uint8 images, a state in robot units, a prompt."""
    rng = np.random.default_rng(seed)
    images = {camera: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for camera in CAMERAS}
    return {**images, "state": rng.normal(size=ROBOT_DIM), "prompt": prompt}


def _policy(folder, layout: Robot | None = None, **kwargs) -> BatchingPolicy:
    model, processor = AutoModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    return BatchingPolicy(model, processor, layout or preset("pi"), **kwargs)


def _direct(folder, observation: dict, noise: torch.Tensor | None) -> dict:
    """The same observation through processor -> generate_actions -> post_process, in this thread."""
    model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    fields = preset("pi").read(observation)
    with torch.inference_mode():
        out = processor.post_process(model.generate_actions(**processor(**fields), **({"noise": noise} if noise is not None else {})))
    return {"actions": out.actions[0].numpy(), "valid": bool(out.valid[0])}


class _ModelGate:
    """Wraps a policy's `model.generate_actions`: holds the model thread until `opened` is set (so that the
    requests sent meanwhile queue up together), counts the rows the model computes, keeps each batch's inputs,
    and raises for a batch that `fails` says it cannot compute."""

    def __init__(self, policy: BatchingPolicy, fails=lambda inputs: False):
        self.entered, self.opened, self.rows, self.fails = threading.Event(), threading.Event(), 0, fails
        self.batches: list[dict] = []
        self._generate = policy.model.generate_actions
        policy.model.generate_actions = self

    def __call__(self, **inputs):
        self.entered.set()
        assert self.opened.wait(60), "the test never opened the gate"
        if self.fails(inputs):
            raise RuntimeError("the model failed on this batch")
        self.rows += len(inputs["pixel_values"])
        self.batches.append(inputs)
        return self._generate(**inputs)


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.01)


@pytest.mark.parametrize("variant", ["pi0", "pi05", "pi0_fast"])
def test_openpi_client_round_trip(policy_folder, variant):
    folder = policy_folder(variant)
    with serve_in_background(_policy(folder, seed=0)) as server:
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        metadata = client.get_server_metadata()
        assert metadata["variant"] == variant and metadata["image_keys"] == list(CAMERAS)
        assert metadata["observation_layout"]["cameras"]["base_0_rgb"] == "base_0_rgb"
        observation = _observation(1)
        reply = client.infer(observation)
    config = AutoModel.from_pretrained(folder).config
    noise = torch.randn(1, config.action_horizon, config.action_dim, generator=torch.Generator().manual_seed(0))
    expected = _direct(folder, observation, noise if config.is_flow else None)
    assert reply["actions"].dtype == np.float32 and reply["actions"].shape == expected["actions"].shape
    assert reply["actions"].shape[1] == ROBOT_DIM
    np.testing.assert_array_equal(reply["actions"], expected["actions"])
    assert reply["valid"] == expected["valid"]
    assert reply["policy_timing"]["infer_ms"] > 0 and reply["server_timing"]["infer_ms"] >= reply["policy_timing"]["infer_ms"]


def test_bad_requests_get_an_error_naming_the_problem_and_the_connection_stays_usable(policy_folder):
    with serve_in_background(_policy(policy_folder("pi05"))) as server:
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        good = _observation(2)
        wrong_dims = np.zeros((3, 48, 64, 3), dtype=np.uint8)
        cases = {
            "Missing state 'state'": {k: v for k, v in good.items() if k != "state"},
            "Missing image 'left_wrist_0_rgb'": {k: v for k, v in good.items() if k != "left_wrist_0_rgb"},
            "must be \\[H, W, 3\\] or \\[3, H, W\\], got \\[3, 48, 64, 3\\]": {**good, "base_0_rgb": wrong_dims},
            "must be uint8 .* got int32": {**good, "base_0_rgb": good["base_0_rgb"].astype(np.int32)},
            "state has 3 dims; the normalisation statistics have 7": {**good, "state": np.zeros(3)},
            "NaN or infinity": {**good, "state": np.full(ROBOT_DIM, np.nan)},
            "'prompt' must be a string": {**good, "prompt": 3},
            "An observation is a dict": [1, 2, 3],
        }
        for message, observation in cases.items():
            with pytest.raises(RuntimeError, match=message):
                client.infer(observation)
            assert client.infer(good)["actions"].shape[1] == ROBOT_DIM  # the same connection still serves

        with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}", compression=None) as raw:
            raw.recv()  # metadata
            for payload, message in ((b"\xc1\x00 not msgpack", "Not a msgpack message"), ("a text frame", "Expected a binary")):
                raw.send(payload)
                assert message in raw.recv()
            raw.send(msgpack_numpy.packb(good))
            assert "actions" in unpackb(raw.recv())


def test_one_clients_errors_do_not_affect_another(policy_folder):
    with serve_in_background(_policy(policy_folder("pi0_fast"))) as server:
        good_client, bad_client = (WebsocketClientPolicy("127.0.0.1", server.port) for _ in range(2))

        def bad():
            for _ in range(5):
                with pytest.raises(RuntimeError):
                    bad_client.infer({"state": np.zeros(ROBOT_DIM)})

        with ThreadPoolExecutor(2) as pool:
            errors = pool.submit(bad)
            replies = pool.submit(lambda: [good_client.infer(_observation(i)) for i in range(5)])
            errors.result()
            assert all(reply["actions"].shape[1] == ROBOT_DIM for reply in replies.result())


def test_oversized_messages_are_refused_without_stopping_the_server(policy_folder):
    with serve_in_background(_policy(policy_folder("pi0")), max_message_bytes=200_000) as server:
        big, small = WebsocketClientPolicy("127.0.0.1", server.port), WebsocketClientPolicy("127.0.0.1", server.port)
        huge = {**_observation(3), "base_0_rgb": np.zeros((400, 400, 3), dtype=np.uint8)}  # 480 kB
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            big.infer(huge)
        assert closed.value.rcvd.code == 1009  # message too big
        assert small.infer(_observation(4))["actions"].shape[1] == ROBOT_DIM
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as health:
            assert health.status == 200 and health.read() == b"OK\n"


def test_eight_concurrent_clients_are_all_served_with_their_own_answers(policy_folder):
    """π0-FAST decodes greedily: each answer must equal that observation's answer alone, whatever it was batched with."""
    folder = policy_folder("pi0_fast")
    observations = [_observation(10 + i, prompt=f"task number {i}") for i in range(8)]
    with serve_in_background(_policy(folder, max_batch=8)) as server:
        clients = [WebsocketClientPolicy("127.0.0.1", server.port) for _ in observations]
        with ThreadPoolExecutor(len(clients)) as pool:
            replies = list(pool.map(lambda pair: [pair[0].infer(pair[1]) for _ in range(3)], zip(clients, observations)))
    assert max(reply["policy_timing"]["batch_size"] for rounds in replies for reply in rounds) > 1  # batching happened
    for observation, rounds in zip(observations, replies):
        expected = _direct(folder, observation, None)
        for reply in rounds:
            np.testing.assert_allclose(reply["actions"], expected["actions"], atol=1e-5, rtol=0)
            assert reply["valid"] == expected["valid"]


def test_a_state_beyond_float32_is_refused_alone_and_the_other_client_gets_its_actions(policy_folder):
    """1e300 is finite in float64 but infinite in float32, the dtype the model computes in: the request is
    refused while it is checked alone, before it can join (and fail) the batch of another client."""
    policy = _policy(policy_folder("pi0"))
    gate = _ModelGate(policy)
    try:
        with serve_in_background(policy) as server, ThreadPoolExecutor(3) as pool:
            holder, poisoner, good = (WebsocketClientPolicy("127.0.0.1", server.port) for _ in range(3))
            held = pool.submit(holder.infer, _observation(1))
            assert gate.entered.wait(10)  # the model thread is busy: the next requests queue up together
            poisoned = pool.submit(poisoner.infer, {**_observation(2), "state": np.full(ROBOT_DIM, 1e300)})
            answered = pool.submit(good.infer, _observation(3))
            with pytest.raises(RuntimeError, match="Bad request: The state holds values beyond float32's range"):
                poisoned.result(timeout=10)  # while the model thread is still held
            _wait_until(lambda: policy.waiting == 1)
            gate.opened.set()
            assert answered.result(timeout=30)["actions"].shape[1] == ROBOT_DIM
            assert held.result(timeout=30)["valid"]
    finally:
        gate.opened.set()
    assert gate.rows == 2


def test_a_failing_batch_is_run_again_one_by_one_so_only_the_culprit_gets_the_error(policy_folder):
    """A request that passes every check but makes the model fail (here: a huge normalised state) takes down
    its batch; the batch's requests are then run alone, and only the culprit is answered with the error."""
    policy = _policy(policy_folder("pi0"))
    gate = _ModelGate(policy, fails=lambda inputs: bool((inputs["state"].abs() > 1e6).any()))
    culprit_state = np.full(ROBOT_DIM, 1e9)
    try:
        with serve_in_background(policy) as server, ThreadPoolExecutor(3) as pool:
            holder, culprit, good = (WebsocketClientPolicy("127.0.0.1", server.port) for _ in range(3))
            held = pool.submit(holder.infer, _observation(1))
            assert gate.entered.wait(10)
            failed = pool.submit(culprit.infer, {**_observation(2), "state": culprit_state})
            answered = pool.submit(good.infer, _observation(3))
            _wait_until(lambda: policy.waiting == 2)  # one batch: culprit and good
            gate.opened.set()
            with pytest.raises(RuntimeError, match="Internal error while running the policy: .*the model failed"):
                failed.result(timeout=30)
            reply = answered.result(timeout=30)
            assert reply["actions"].shape[1] == ROBOT_DIM and reply["policy_timing"]["batch_size"] == 1
            assert held.result(timeout=30)["valid"]
    finally:
        gate.opened.set()
    assert policy.stats["retried"] == 2 and gate.rows == 2


def test_requests_of_clients_that_left_are_withdrawn_and_a_live_client_is_answered_next(policy_folder):
    """15 clients send one request each and disconnect while the model is busy: none of their requests is
    computed, the queue is empty, and the next live client's request runs alone, at once."""
    policy = _policy(policy_folder("pi05"))
    gate = _ModelGate(policy)
    try:
        with serve_in_background(policy) as server, ThreadPoolExecutor(1) as pool:
            holder = WebsocketClientPolicy("127.0.0.1", server.port)
            held = pool.submit(holder.infer, _observation(1))
            assert gate.entered.wait(10)
            payload = msgpack_numpy.packb(_observation(2))
            for _ in range(15):
                with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}", compression=None) as leaving:
                    leaving.recv()  # metadata
                    leaving.send(payload)
            _wait_until(lambda: policy.stats["abandoned"] == 15)
            assert policy.waiting == 0
            gate.opened.set()
            assert held.result(timeout=30)["valid"]
            reply = WebsocketClientPolicy("127.0.0.1", server.port).infer(_observation(3))
            assert reply["actions"].shape[1] == ROBOT_DIM and reply["policy_timing"]["batch_size"] == 1
    finally:
        gate.opened.set()
    assert gate.rows == 2  # the holder's and the live client's requests, nothing else


def test_a_prompt_longer_than_the_limit_is_refused_before_tokenising(policy_folder):
    with serve_in_background(_policy(policy_folder("pi05"))) as server:
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        assert client.get_server_metadata()["max_prompt_chars"] == DEFAULT_MAX_PROMPT_CHARS
        with pytest.raises(RuntimeError, match=f"The prompt has 200000 characters; this server takes at most "
                                               f"{DEFAULT_MAX_PROMPT_CHARS} \\(--max-prompt-chars\\)"):
            client.infer(_observation(1, prompt="pick up the cup " * 12_500))
        assert client.infer(_observation(1))["actions"].shape[1] == ROBOT_DIM
    args = pi_serve.add_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", policy_folder("pi05"), "--max-prompt-chars", "20", "--device", "cpu"])
    with serve_in_background(pi_serve.build_policy(args)) as server:
        with pytest.raises(RuntimeError, match="at most 20 "):
            WebsocketClientPolicy("127.0.0.1", server.port).infer(_observation(1, prompt="pick up the red cup, please"))


def test_a_fast_folder_without_robot_action_dims_is_refused_at_startup(policy_folder, tmp_path):
    """Without action statistics or robot_action_dim, FAST ids cannot be decoded into actions: the server says
    so when it starts, not after decoding every request."""
    folder = tmp_path / "fast_without_dims"
    shutil.copytree(policy_folder("pi0_fast"), folder)
    processor = AutoProcessor.from_pretrained(folder)
    processor.norm_stats = processor.robot_action_dim = None
    processor.save_pretrained(folder)
    missing = "cannot turn this model's output into robot actions: .*robot_action_dim \\(or norm_stats\\)"
    with pytest.raises(ValueError, match=missing):
        _policy(folder)
    args = pi_serve.add_arguments(argparse.ArgumentParser()).parse_args(["--model", str(folder), "--device", "cpu"])
    with pytest.raises(ValueError, match=missing):
        pi_serve.build_policy(args)


@pytest.mark.parametrize("flags, message", [
    (["--max-batch", "0"], "--max-batch must be at least 1, got 0"),
    (["--num-steps", "0"], "--num-steps must be at least 1, got 0"),
    (["--max-guidance-weight", "nan"], "--max-guidance-weight must be a finite number >= 0, got nan"),
    (["--max-guidance-weight", "inf"], "--max-guidance-weight must be a finite number >= 0, got inf"),
    (["--device", "no_such_device"], "--device no_such_device:"),
    (["--max-prompt-chars", "0"], "--max-prompt-chars must be at least 1, got 0"),
    (["--port", "70000"], "--port must be 0 (a free port) to 65535, got 70000"),
    (["--max-message-mb", "0"], "--max-message-mb must be a positive number, got 0.0"),
    (["--model", "/no/such/folder"], "--model /no/such/folder: no such folder (nor a Hub id"),  # no Hub lookup
    (["--device", "meta"], "--device meta: tensors on the meta device hold no values"),  # it answered every request
    (["--camera", "base_0_rgb=a", "--camera", "base_0_rgb=b"], "--camera gives the model camera(s) base_0_rgb twice"),
    (["--prompt-key", ""], "--prompt-key must name the observation's prompt key, got an empty one"),
])
def test_flags_no_request_could_be_served_with_are_refused_at_startup(policy_folder, flags, message):
    # --max-batch 0 would leave every request queued; the others would fail every request, or answer NaN
    args = pi_serve.add_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", policy_folder("pi05"), "--device", "cpu", *flags])
    with pytest.raises(ValueError, match=re.escape(message)):
        pi_serve.build_policy(args)


def test_an_address_it_cannot_listen_on_is_an_error_that_names_it(policy_folder, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = pi_serve.add_arguments(argparse.ArgumentParser()).parse_args(
            ["--model", policy_folder("pi05"), "--device", "cpu", "--port", str(port)])
        assert pi_serve.run(args) == 1  # not a traceback
    assert f"pi serve: error: cannot serve on 127.0.0.1:{port}:" in capsys.readouterr().err


def test_the_default_preset_reads_the_models_own_camera_names():
    # the shipped demo policy names its cameras scene and wrist, not openpi's base_0_rgb, ...
    args = pi_serve.add_arguments(argparse.ArgumentParser()).parse_args(["--model", str(SHIPPED_MODEL), "--device", "cpu"])
    policy = pi_serve.build_policy(args)
    assert policy.processor.robot.cameras == {"scene": "scene", "wrist": "wrist"}
    image = np.zeros((32, 32, 3), np.uint8)
    observation = {"scene": image, "wrist": image, "state": np.array([0.2, 0.4]), "prompt": "move to the red block"}
    answer = policy.infer_now(observation)
    assert answer["actions"].shape == (8, 2) and answer["valid"]


def test_healthz_answers_503_while_draining_and_the_request_in_flight_is_answered(policy_folder):
    policy = _policy(policy_folder("pi05"))
    gate = _ModelGate(policy)
    serving = serve_in_background(policy)
    server = serving.__enter__()
    try:
        with ThreadPoolExecutor(2) as pool:
            in_flight = pool.submit(WebsocketClientPolicy("127.0.0.1", server.port).infer, _observation(1))
            assert gate.entered.wait(10)
            stopped = pool.submit(serving.__exit__, None, None, None)  # drains: waits for the request in flight
            _wait_until(lambda: server.draining)
            with pytest.raises(urllib.error.HTTPError) as unavailable:
                urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10)
            assert unavailable.value.code == 503 and unavailable.value.read() == b"shutting down\n"
            with pytest.raises(websockets.InvalidStatus) as refused:  # a new client is turned away likewise
                websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}", compression=None)
            assert refused.value.response.status_code == 503
            gate.opened.set()
            assert in_flight.result(timeout=30)["actions"].shape[1] == ROBOT_DIM
            stopped.result(timeout=30)
    finally:
        gate.opened.set()


@torch.no_grad()
def test_a_flow_request_gets_the_same_actions_batched_or_alone(policy_folder):
    policy = _policy(policy_folder("pi05"))
    requests = []
    for i in range(3):
        inputs, robot_state = policy._preprocess(_observation(20 + i))
        noise = torch.randn(1, policy.model.config.action_horizon, policy.model.config.action_dim)
        requests.append(type("Request", (), {"inputs": inputs, "robot_state": robot_state, "noise": noise,
                                             "arrived": time.monotonic()})())
    together = policy._generate(requests)
    for request, answer in zip(requests, together):
        alone = policy._generate([request])[0]
        np.testing.assert_allclose(answer["actions"], alone["actions"], atol=1e-5, rtol=0)


def test_presets_read_the_openpi_robot_layouts():
    rng = np.random.default_rng(0)
    chw = rng.integers(0, 256, (3, 32, 40), dtype=np.uint8)
    aloha = {"images": {"cam_high": chw, "cam_low": chw, "cam_left_wrist": chw, "cam_right_wrist": chw},
             "state": np.arange(14.0), "prompt": "fold"}
    fields = preset("aloha").read(aloha)
    assert sorted(fields["images"]) == sorted(CAMERAS) and fields["images"]["base_0_rgb"].shape == (32, 40, 3)
    np.testing.assert_array_equal(fields["images"]["base_0_rgb"], chw.transpose(1, 2, 0))
    hwc = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    droid = {"observation/exterior_image_1_left": hwc, "observation/wrist_image_left": hwc,
             "observation/joint_position": np.arange(7.0), "observation/gripper_position": np.array([0.5])}
    fields = preset("droid", default_prompt="pick up the fork").read(droid)
    assert list(fields["images"]) == ["base_0_rgb", "left_wrist_0_rgb"] and fields["prompt"] == "pick up the fork"
    np.testing.assert_array_equal(fields["state"], [0, 1, 2, 3, 4, 5, 6, 0.5])
    libero = {"observation/image": hwc, "observation/wrist_image": hwc, "observation/state": np.zeros(8), "prompt": b"open"}
    assert preset("libero").read(libero)["prompt"] == "open"
    for prompt in (np.array(b"open"), np.bytes_(b"open"), np.array("open")):  # as numpy clients may send it
        assert preset("libero").read({**libero, "prompt": prompt})["prompt"] == "open"
    assert preset("droid", default_prompt="").read(droid)["prompt"] == ""
    with pytest.raises(ObservationError, match="no default prompt"):
        preset("droid").read(droid)
    with pytest.raises(ValueError, match="Unknown observation preset"):
        preset("franka")


def test_actions_and_states_that_do_not_pair_up_are_refused_by_name():
    mask = [True] * 6 + [False] + [True] * 6 + [False]  # ALOHA's conversion and delta joints
    robot = Robot(cameras={"base_0_rgb": "image"}, state_keys=["state"], adapt_to_pi=True, delta_action_mask=mask)
    chunk, state = np.zeros((2, 5, 14)), np.zeros((2, 14))
    assert robot.to_robot(chunk, state).shape == robot.from_robot(chunk, state).shape == (2, 5, 14)
    for convert in (robot.to_robot, robot.from_robot):
        with pytest.raises(ValueError, match=re.escape("2 action chunk(s) for 1 state(s)")):
            convert(chunk, state[:1])
        with pytest.raises(ValueError, match=re.escape("state [B, S], got shapes [2, 5, 14] and [14]")):
            convert(chunk, state[0])
        with pytest.raises(ValueError, match="ALOHA's 14 action dims, got 7"):
            convert(chunk[..., :7], state)
    delta = Robot(cameras={"base_0_rgb": "image"}, state_keys=["state"], delta_action_mask=[True] * 6 + [False])
    with pytest.raises(ValueError, match=re.escape("state of 3 dims are narrower than delta_action_mask (7 dims)")):
        delta.to_robot(chunk, state[:, :3])
    with pytest.raises(ValueError, match=re.escape("actions of 5 dims are narrower than delta_action_mask (7 dims)")):
        delta.from_robot(chunk[..., :5], state)
    with pytest.raises(ValueError, match=re.escape("The actions have 14 dims; the robot has 20 (action_dim)")):
        Robot(cameras={"base_0_rgb": "image"}, state_keys=["state"], action_dim=20).to_robot(chunk, state)


def test_robot_layouts_that_cannot_read_a_state_are_refused_by_name():
    camera = {"base_0_rgb": "image"}
    for name, value in (("state_dim", 0), ("action_dim", "7"), ("action_dim", True)):
        with pytest.raises(ValueError, match=re.escape(f"{name} must be a whole number of at least 1, got {value!r}")):
            Robot.from_dict({"cameras": camera, "state_keys": ["state"], name: value})
    with pytest.raises(ValueError, match="adapt_to_pi converts ALOHA's 14 dims; this robot's action_dim is 7"):
        Robot(cameras=camera, state_keys=["state"], adapt_to_pi=True, state_dim=14, action_dim=7)
    aloha = Robot(cameras=camera, state_keys=["state"], adapt_to_pi=True)  # no state_dim: ALOHA's 14 all the same
    with pytest.raises(ObservationError, match=re.escape("The state (state) has 12 values; ALOHA's conversion (adapt_to_pi) takes 14")):
        aloha.state({"state": np.zeros(12)})
    with pytest.raises(ValueError, match="other_images are keys inside the dict"):
        Robot(cameras=camera, state_keys=["state"], other_images=["cam_low"])
    assert Robot(cameras=camera, state_keys=["state"], state_dim=np.int64(7)).state_dim == 7


def test_other_images_refuses_a_misnamed_camera_and_takes_the_values_beside_the_images():
    robot = Robot(cameras={"base_0_rgb": "observation/image", "left_wrist_0_rgb": "observation/wrist_image"},
                  optional_cameras=["left_wrist_0_rgb"], other_images=["observation/depth"],
                  state_keys=["observation/state"], prompt_key="observation/prompt")
    image = np.zeros((8, 8, 3), np.uint8)
    observation = {"observation": {"image": image, "depth": image, "state": np.zeros(7), "prompt": "go", "step": 3}}
    assert robot.read(observation)["images"]["left_wrist_0_rgb"] is None
    observation["observation"]["wirst_image"] = image
    with pytest.raises(ObservationError, match=re.escape("Unknown image(s) 'observation/wirst_image'")):
        robot.read(observation)


def test_wire_format_is_openpis_and_refuses_what_is_not_plain_numbers():
    observation = {"image": np.arange(24, dtype=np.uint8).reshape(2, 4, 3), "state": np.float32(1.5), "prompt": "go"}
    for decoded in (unpackb(msgpack_numpy.packb(observation)), msgpack_numpy.unpackb(packb(observation))):
        np.testing.assert_array_equal(decoded["image"], observation["image"])
        assert decoded["state"] == np.float32(1.5) and decoded["prompt"] == "go"
    with pytest.raises(WireError, match="dtype"):
        unpackb(packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": (0,)}}))
    with pytest.raises(WireError, match="does not match"):
        unpackb(packb({"x": {b"__ndarray__": True, b"data": b"\x00" * 3, b"dtype": "<f4", b"shape": (2,)}}))
    with pytest.raises(WireError, match="Not a msgpack"):
        unpackb(b"\xc1")
    for scalar in ({b"data": 300, b"dtype": "|u1"}, {b"dtype": "<f8"}):  # out of its dtype's range; no data
        with pytest.raises(WireError, match="A numpy scalar whose data does not fit its dtype"):
            unpackb(packb({"state": {b"__npgeneric__": True, **scalar}}))


def _wait_for_port(process: subprocess.Popen, lines: list[str]) -> int:
    """Reads the server's log until it says where it serves."""
    for line in process.stderr:
        lines.append(line)
        found = re.search(r"on ws://127\.0\.0\.1:(\d+)", line)
        if found:
            return int(found.group(1))
    raise AssertionError("pi serve exited before serving:\n" + "".join(lines))


def test_sigterm_answers_in_flight_requests_then_exits_cleanly(policy_folder):
    process = subprocess.Popen(
        [BIN / "pi", "serve", "--model", policy_folder("pi05"), "--port", "0", "--num-steps", "400", "--device", "cpu"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    lines = []
    try:
        port = _wait_for_port(process, lines)
        threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
        client = WebsocketClientPolicy("127.0.0.1", port)
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(client.infer, _observation(5))
            time.sleep(0.3)  # the request is being served (400 flow steps)
            process.send_signal(signal.SIGTERM)
            assert reply.result(timeout=120)["actions"].shape[1] == ROBOT_DIM
        assert process.wait(timeout=60) == 0, "".join(lines)
        with pytest.raises((ConnectionError, OSError, urllib.error.URLError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        process.kill()

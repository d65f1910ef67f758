"""Real-time chunking on the robot's side: the server continues `prev_actions` (converted back through the
processor's training direction), and `RealTimeChunkBroker` requests the next chunk while the robot executes
the current one. The broker's timing is made deterministic with `simulated_delay`, or with a policy held until
the test lets it answer: no test waits on the wall clock."""

import argparse
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from transformers import AutoModel, AutoProcessor

import modeling_pi  # noqa: F401
from conftest import CAMERAS, PROCESSOR, ROBOT_DIM
from processing_pi import Robot
from serving_pi import BatchingPolicy, LocalPolicy, RealTimeChunkBroker, preset
from serving_pi import server as pi_serve
from serving_pi.server import serve_in_background
from test_serving import _ModelGate, _wait_until

STEPS = 3  # flow steps: the fixture models are random, the tests are about what goes in and out
# A robot whose first six action dims are predicted relative to the state: prev_actions go back through it.
DELTA = Robot(cameras={camera: camera for camera in CAMERAS}, state_keys=["state"], action_dim=ROBOT_DIM,
              delta_action_mask=[True] * 6 + [False], name="delta")


def _observation(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    images = {camera: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for camera in CAMERAS}
    return {**images, "state": rng.normal(size=ROBOT_DIM), "prompt": "pick up the red cup"}


def _policy(folder, layout: Robot = DELTA, **kwargs) -> BatchingPolicy:
    model, processor = AutoModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    return BatchingPolicy(model, processor, layout, num_steps=STEPS, **kwargs)


@torch.no_grad()
def _direct(model, processor, observation: dict, noise: torch.Tensor, prev_actions: np.ndarray | None = None,
            delay: int = 0) -> np.ndarray:
    """The observation through the processor's observation path (with `prev_actions` as its training targets),
    `generate_actions` and `post_process`, in this thread."""
    processor = processor.replace(robot=DELTA)
    inputs = dict(processor(observation=observation, actions=None if prev_actions is None else prev_actions[None]))
    options = {}
    if prev_actions is not None:
        horizon, leftover = model.config.action_horizon, len(prev_actions)
        normalised = inputs.pop("actions")
        options = {"prev_actions": torch.cat([normalised, normalised.new_zeros(1, horizon - leftover, normalised.shape[2])], 1),
                   "inference_delay": delay, "execution_horizon": horizon - leftover}
    generated = model.generate_actions(**inputs, noise=noise, num_steps=STEPS, **options)
    return processor.post_process(generated, observation=observation).actions[0].numpy()


# ---- the server -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_the_server_continues_prev_actions_as_generate_actions_does_and_plain_requests_are_unchanged(policy_folder, variant):
    folder = policy_folder(variant)
    with serve_in_background(_policy(folder, seed=0)) as server:
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        metadata = client.get_server_metadata()
        first = client.infer(_observation(1))["actions"]
        prev_actions = first[30:]  # 20 left of 50: execution_horizon 30
        continued = client.infer({**_observation(2), "prev_actions": prev_actions, "inference_delay": 4})["actions"]
    assert metadata["real_time_chunking"] is True and metadata["rtc_max_delay"] == 0
    generator = torch.Generator().manual_seed(0)
    noises = [torch.randn(1, 50, 32, generator=generator) for _ in range(2)]
    model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    np.testing.assert_array_equal(first, _direct(model, processor, _observation(1), noises[0]))
    np.testing.assert_array_equal(continued, _direct(model, processor, _observation(2), noises[1], prev_actions, delay=4))


def test_a_knowledge_insulation_folder_continues_prev_actions_as_a_plain_one(policy_folder):
    # its processor writes a training chunk's FAST tokens into the prompt: the leftover must not be taken for one
    from processing_pi import FastActionTokenizer

    folder = policy_folder("pi05")
    insulated = AutoProcessor.from_pretrained(folder).replace(
        action_tokenizer=FastActionTokenizer.from_pretrained(PROCESSOR / "fast_tokenizer"), knowledge_insulation=True)
    policy = BatchingPolicy(AutoModel.from_pretrained(folder), insulated, DELTA, num_steps=STEPS, seed=0)
    prev_actions = _policy(folder).infer_now(_observation(1))["actions"][30:]
    request = {**_observation(2), "prev_actions": prev_actions, "inference_delay": 4}
    np.testing.assert_array_equal(policy.infer_now(request)["actions"], _policy(folder, seed=0).infer_now(request)["actions"])


def test_pi_serve_passes_its_guidance_flags_to_every_continued_chunk(policy_folder):

    def built(folder, *flags):
        parser = pi_serve.add_arguments(argparse.ArgumentParser())
        return pi_serve.build_policy(parser.parse_args(["--model", folder, "--device", "cpu", *flags]))

    folder = policy_folder("pi05")
    policy = built(folder, "--max-guidance-weight", "0", "--prefix-schedule", "linear", "--num-steps", "3")
    assert policy.generate_kwargs == {"num_steps": 3, "max_guidance_weight": 0.0, "prefix_schedule": "linear"}
    assert built(folder).generate_kwargs == {}  # generate_actions' own defaults (β = 5, exp)
    with pytest.raises(ValueError, match="--max-guidance-weight must be a finite number >= 0, got -1.0"):
        built(folder, "--max-guidance-weight", "-1")
    with pytest.raises(ValueError, match="π0-FAST does not support"):
        built(policy_folder("pi0_fast"), "--prefix-schedule", "ones")
    # β = 0: a continued chunk is the plain one from the same noise
    with serve_in_background(_policy(folder, seed=0, max_guidance_weight=0.0)) as server:
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        prev_actions = client.infer(_observation(1))["actions"][30:]
        continued = client.infer({**_observation(2), "prev_actions": prev_actions, "inference_delay": 4})["actions"]
    generator = torch.Generator().manual_seed(0)
    noises = [torch.randn(1, 50, 32, generator=generator) for _ in range(2)]
    model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    np.testing.assert_array_equal(continued, _direct(model, processor, _observation(2), noises[1]))


def test_a_model_trained_with_a_clean_prefix_keeps_the_first_d_prev_actions_in_robot_units(policy_folder):
    """prev_actions -> robot's inverse conversions (delta to the new state) -> normalised -> kept by the model ->
    un-normalised -> robot conversions: the robot gets its own actions back."""
    folder = policy_folder("pi0")
    model = AutoModel.from_pretrained(folder, rtc_max_delay=5)
    policy = LocalPolicy(model, AutoProcessor.from_pretrained(folder), DELTA, seed=0, num_steps=STEPS)
    assert policy.get_server_metadata()["rtc_max_delay"] == 5
    prev_actions = policy.infer(_observation(1))["actions"][10:]
    continued = policy.infer({**_observation(2), "prev_actions": prev_actions, "inference_delay": 5})["actions"]
    np.testing.assert_allclose(continued[:5], prev_actions[:5], rtol=0, atol=1e-4)
    assert not np.allclose(continued[5:10], prev_actions[5:10], atol=1e-2)
    with pytest.raises(ValueError, match=r"clean prefixes of at most 5 steps \(rtc_max_delay\): inference_delay must be at most"):
        policy.infer({**_observation(2), "prev_actions": prev_actions, "inference_delay": 6})


def test_bad_prev_actions_and_delays_are_refused_naming_the_problem_and_the_connection_stays_usable(policy_folder):
    with serve_in_background(_policy(policy_folder("pi05"))) as server:
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        good = {**_observation(3), "prev_actions": np.zeros((20, ROBOT_DIM), np.float32), "inference_delay": 2}
        cases = {
            r"prev_actions must be the previous chunk's actions not yet executed, \[L, 7\] .* got float64 \[20, 3\]":
                {**good, "prev_actions": np.zeros((20, 3))},
            r"got float32 \[1, 20, 7\]": {**good, "prev_actions": good["prev_actions"][None]},
            r"got <U1 \[20, 7\]": {**good, "prev_actions": np.full((20, ROBOT_DIM), "a")},
            r"prev_actions holds 0 actions; it must hold 1 to 49": {**good, "prev_actions": np.zeros((0, ROBOT_DIM))},
            r"prev_actions holds 50 actions": {**good, "prev_actions": np.zeros((50, ROBOT_DIM))},
            r"prev_actions holds NaN or infinite values": {**good, "prev_actions": np.full((20, ROBOT_DIM), np.nan)},
            r"After preprocessing, prev_actions holds NaN or values beyond the range of torch.float32":
                {**good, "prev_actions": np.full((20, ROBOT_DIM), 1e300)},
            # finite in float32, but guidance towards them overflows: the NaN chunk is not sent (clients ignore `valid`)
            r"The chunk holds NaN or inf values, so it is not a prediction and is not sent":
                {**good, "prev_actions": np.full((20, ROBOT_DIM), 1e30)},
            r"inference_delay must be 0 to the 20 prev_actions sent": {**good, "inference_delay": 21},
            r"inference_delay must be 0 to the 20": {**good, "inference_delay": -1},
            r"inference_delay must be a whole number of control steps, got 1.5": {**good, "inference_delay": 1.5},
            r"inference_delay must be a whole number of control steps, got True": {**good, "inference_delay": True},
            r"inference_delay was sent without prev_actions": {**_observation(3), "inference_delay": 2},
        }
        for message, observation in cases.items():
            with pytest.raises(RuntimeError, match="Bad request: .*" + message):
                client.infer(observation)
            assert client.infer(good)["actions"].shape == (50, ROBOT_DIM)  # the same connection still serves
        no_delay = {key: value for key, value in good.items() if key != "inference_delay"}
        assert client.infer(no_delay)["actions"].shape == (50, ROBOT_DIM)  # d defaults to 0


def test_pi0_fast_says_it_does_not_chunk_in_real_time_and_refuses_prev_actions(policy_folder):
    folder = policy_folder("pi0_fast")
    policy = BatchingPolicy(AutoModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder), preset("pi"))
    with serve_in_background(policy) as server:
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        assert client.get_server_metadata()["real_time_chunking"] is False
        for continuation in ({"prev_actions": np.zeros((10, ROBOT_DIM), np.float32), "inference_delay": 1},
                             {"inference_delay": 1}):  # not "send both": that is refused too
            with pytest.raises(RuntimeError, match="Bad request: π0-FAST does not support real-time chunking"):
                client.infer({**_observation(4), **continuation})


def test_requests_with_and_without_prev_actions_are_batched_apart(policy_folder):
    """Queued as plain, continued (L = 20, d = 2), plain, continued (L = 10, d = 5): two batches of two, each of
    one kind; the continued ones share theirs although their L and d differ."""
    policy = _policy(policy_folder("pi05"), max_batch=8)
    model = _ModelGate(policy)
    prev_actions = np.zeros((50, ROBOT_DIM), np.float32)
    observations = [_observation(5), {**_observation(6), "prev_actions": prev_actions[:20], "inference_delay": 2},
                    _observation(7), {**_observation(8), "prev_actions": prev_actions[:10], "inference_delay": 5}]
    try:
        with serve_in_background(policy) as server, ThreadPoolExecutor(5) as pool:
            clients = [WebsocketClientPolicy("127.0.0.1", server.port) for _ in range(5)]
            held = pool.submit(clients[0].infer, _observation(9))
            assert model.entered.wait(10)
            replies = []
            for i, (client, observation) in enumerate(zip(clients[1:], observations)):
                replies.append(pool.submit(client.infer, observation))
                _wait_until(lambda queued=i + 1: policy.waiting == queued)  # queued in this order
            model.opened.set()
            assert held.result(timeout=30)["valid"]
            sizes = [reply.result(timeout=30)["policy_timing"]["batch_size"] for reply in replies]
    finally:
        model.opened.set()
    assert sizes == [2, 2, 2, 2]
    assert [(len(b["pixel_values"]), "prev_actions" in b) for b in model.batches] == [(1, False), (2, False), (2, True)]


# ---- the broker -----------------------------------------------------------------------------------


class _ScriptedPolicy:
    """Chunk n of `horizon` steps holds 100·n + step in every dim; records each request. With `hold`, every
    request but the first waits for a permit the test releases."""

    def __init__(self, horizon: int = 10, hold: bool = False):
        self.horizon, self.hold, self.requests = horizon, hold, []
        self.permits = threading.Semaphore(0)

    def infer(self, obs: dict) -> dict:
        self.requests.append(obs)
        n = len(self.requests) - 1
        if self.hold and n > 0:
            assert self.permits.acquire(timeout=30), "the test never let the request be answered"
        return {"actions": np.repeat(100.0 * n + np.arange(self.horizon)[:, None], 3, axis=1), "valid": True}

    def reset(self) -> None:
        pass


def _run(broker: RealTimeChunkBroker, steps: range) -> list[float]:
    """The first action dim of each step (100·chunk + index in it), each observation naming its step."""
    return [float(broker.infer({"step": step})["actions"][0]) for step in steps]


def test_the_broker_hands_out_the_current_chunk_while_the_next_is_computed_and_takes_it_up_at_step_k():
    """H = 10, s = 4, answers after k = 2 steps: the request at step 4 carries chunk 0's steps 4..9 and the
    initial delay (0); chunk 1 is taken up at its step 2 on step 6; the next request, at chunk 1's step 4
    (step 8), carries its steps 4..9 and the delay measured, 2."""
    policy = _ScriptedPolicy()
    broker = RealTimeChunkBroker(policy, execution_horizon=4, simulated_delay=2)
    assert _run(broker, range(12)) == [0, 1, 2, 3, 4, 5, 102, 103, 104, 105, 202, 203]
    first, second, third = policy.requests
    assert "prev_actions" not in first and first["step"] == 0
    assert second["step"] == 4 and second["inference_delay"] == 0
    np.testing.assert_array_equal(second["prev_actions"][:, 0], [4, 5, 6, 7, 8, 9])
    assert third["step"] == 8 and third["inference_delay"] == 2
    np.testing.assert_array_equal(third["prev_actions"][:, 0], [104, 105, 106, 107, 108, 109])
    assert list(broker.delays) == [2, 2]

    broker.reset()  # a new episode: the first chunk is waited for again, and comes without prev_actions
    assert _run(broker, range(1)) == [300] and "prev_actions" not in policy.requests[-1]
    assert broker.inference_delay == 2  # the delays measured are kept
    broker.close()


def test_an_answer_later_than_the_chunk_is_waited_for_and_the_delay_is_capped_to_fit_the_chunk():
    """Not simulated: the request of step 4 is held until the chunk has run out (step 10), so it is taken up at
    its step 6 (= H − s) and a delay of 6 is measured; the next request, sent at once (6 >= s), leaves 4 actions
    and so sends d = 4 (d + s <= H); `max_delay` caps it further."""
    policy = _ScriptedPolicy(hold=True)
    broker = RealTimeChunkBroker(policy, execution_horizon=4, inference_delay=1)
    assert _run(broker, range(10)) == list(range(10))  # the request of step 4 is pending all along
    policy.permits.release()  # answered before step 10 or while step 10 waits for it: taken up at its step 6 either way
    assert _run(broker, range(10, 12)) == [106, 107]  # the request of step 10 is held
    assert list(broker.delays) == [6]
    policy.permits.release()
    broker.close()  # after the request in flight has been answered
    second, third = policy.requests[1:]
    assert second["step"] == 4 and second["inference_delay"] == 1
    assert third["step"] == 10 and third["inference_delay"] == 4 and len(third["prev_actions"]) == 4

    capped = RealTimeChunkBroker(_ScriptedPolicy(), execution_horizon=4, simulated_delay=3, max_delay=1)
    _run(capped, range(12))
    assert capped.policy.requests[2]["inference_delay"] == 1 and list(capped.delays) == [3, 3]
    capped.close()


def test_a_failed_request_is_raised_at_its_step_and_the_broker_goes_on():
    class Failing(_ScriptedPolicy):
        def infer(self, obs):
            if "prev_actions" in obs and len(self.requests) == 1:
                self.requests.append(obs)
                raise RuntimeError("Error in inference server: Bad request")
            return super().infer(obs)

    policy = Failing()
    broker = RealTimeChunkBroker(policy, execution_horizon=4, simulated_delay=1)
    assert _run(broker, range(5)) == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="Bad request"):
        broker.infer({"step": 5})
    assert _run(broker, range(5, 8)) == [5, 201, 202]  # requested again at step 5, taken up one step later
    broker.close()


def test_the_broker_refuses_an_execution_horizon_that_leaves_nothing_to_continue():
    with pytest.raises(ValueError, match="execution_horizon must be a whole number of control steps, at least 1"):
        RealTimeChunkBroker(_ScriptedPolicy(), execution_horizon=0)
    broker = RealTimeChunkBroker(_ScriptedPolicy(horizon=10), execution_horizon=10)
    with pytest.raises(ValueError, match="execution_horizon=10 leaves no actions of a 10-step chunk to continue"):
        broker.infer({})
    broker.close()
    with pytest.raises(RuntimeError, match="closed"):
        broker.infer({})
    broker = RealTimeChunkBroker(_ScriptedPolicy(), execution_horizon=np.int64(4), inference_delay=np.int64(1),
                                 delay_window=np.int64(3), max_delay=np.int64(2))
    assert broker.execution_horizon == 4 and type(broker.execution_horizon) is int  # numpy integers are whole numbers
    broker.close()


class _Recording:
    """A policy that keeps every request and answer of the one it wraps."""

    def __init__(self, policy):
        self.policy, self.requests, self.answers = policy, [], []

    def infer(self, obs: dict) -> dict:
        self.requests.append(obs)
        self.answers.append(self.policy.infer(obs))
        return self.answers[-1]

    def reset(self) -> None:
        self.policy.reset()


def _drive(policy, steps: int, s: int = 45, k: int = 2) -> tuple[_Recording, list[np.ndarray]]:
    recording = _Recording(policy)
    broker = RealTimeChunkBroker(recording, execution_horizon=s, simulated_delay=k)
    actions = [broker.infer(_observation(100 + step))["actions"] for step in range(steps)]
    broker.close()
    return recording, actions


def _check_drive(recording: _Recording, actions: list[np.ndarray]) -> None:
    """H = 50, s = 45, k = 2: chunk 1 is requested at step 45 with chunk 0's last 5 actions and d = 0, and taken up
    at its step 2 on step 47; chunk 2 is requested at step 90 (chunk 1's step 45) with d = 2."""
    chunks = [answer["actions"] for answer in recording.answers]
    assert len(chunks) == 3 and all(chunk.shape == (50, ROBOT_DIM) for chunk in chunks)
    for step in (0, 44, 45, 46):
        np.testing.assert_array_equal(actions[step], chunks[0][step])
    for step in (47, 89, 90):
        np.testing.assert_array_equal(actions[step], chunks[1][step - 45])
    second, third = recording.requests[1:]
    np.testing.assert_array_equal(second["prev_actions"], chunks[0][45:])
    np.testing.assert_array_equal(third["prev_actions"], chunks[1][45:])
    np.testing.assert_array_equal(second["state"], _observation(145)["state"])
    np.testing.assert_array_equal(third["state"], _observation(190)["state"])
    assert second["inference_delay"] == 0 and third["inference_delay"] == 2


def test_the_broker_runs_with_the_in_process_policy(policy_folder):
    _check_drive(*_drive(LocalPolicy.from_pretrained(policy_folder("pi05"), device="cpu", num_steps=STEPS), 91))


def test_the_broker_runs_against_the_server(policy_folder):
    with serve_in_background(_policy(policy_folder("pi0"))) as server:
        _check_drive(*_drive(WebsocketClientPolicy("127.0.0.1", server.port), 91))

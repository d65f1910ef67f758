"""Real-time chunking on the robot's side: the next chunk is computed while the robot executes the current one.

openpi's `ActionChunkBroker` hands a chunk out step by step and asks for the next one when it has run out, so
the robot stands still while the model runs. `RealTimeChunkBroker` asks for the next chunk in a background
thread once `execution_horizon` s steps of the current one are handed out, and keeps handing out the current
chunk meanwhile. Its request is the current observation plus `prev_actions`, the chunk's actions not yet
handed out (H − s of them, in the robot's units, aligned to the step the observation was taken at), and
`inference_delay` d, its estimate of the control steps the answer takes; the model makes the new chunk
continue them (`serving_pi.policy`; "Real-Time Execution of Action Chunking Flow Policies", Black et al. 2025).
When the answer arrives k steps after the request, the robot has executed the first k of `prev_actions`: the
new chunk is taken up at its step k. Delays are counted in control steps, as the `infer` calls from the
request to the call that finds its answer there (looked for at every call; when the current chunk runs out
first, the broker waits for it); the d sent is the largest of the last few, capped so that d + s <= H.

`LocalPolicy` answers the same observations in this process, through the server's own reading, conversions
and checks (`BatchingPolicy.infer_now`), so the broker also runs without a server.

Written by hand: openpi-client brokers chunks synchronously only, and no library knows this protocol. Both
classes have openpi-client's policy interface (`infer`, `reset`) without importing it, as openpi's runtime
(`PolicyAgent`) calls them.
"""

import numbers
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np
import torch

from processing_pi import Robot

from .observations import preset
from .policy import INFERENCE_DELAY, PREV_ACTIONS, BatchingPolicy


class RealTimeChunkBroker:
    """One step's actions per `infer(obs)`, as openpi's `ActionChunkBroker`, from a policy whose `infer(obs)`
    answers a chunk {"actions": [H, robot dims], ...} and reads `prev_actions` and `inference_delay`: openpi's
    `WebsocketClientPolicy` connected to `pi serve`, or `LocalPolicy`. One request is in flight at a time."""

    def __init__(self, policy, execution_horizon: int, inference_delay: int = 0, delay_window: int = 5,
                 max_delay: int | None = None, simulated_delay: int | None = None):
        """`execution_horizon` s: steps handed out from a chunk before the next is requested (1 to H − 1).
        `inference_delay`: the delay sent until one has been measured. `delay_window`: how many of the last
        measured delays the estimate is the largest of. `max_delay`: the largest delay to send (a model trained
        with a clean prefix takes at most its `rtc_max_delay`, which the server's metadata holds).
        `simulated_delay`: every answer is taken up exactly this many steps after its request (waited for then
        if need be), not as soon as it is there: for simulations, whose steps are not the wall clock's, and tests."""
        for name, value, least in (("execution_horizon", execution_horizon, 1), ("inference_delay", inference_delay, 0),
                                   ("delay_window", delay_window, 1), ("max_delay", max_delay, 0),
                                   ("simulated_delay", simulated_delay, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                      or value < least):
                raise ValueError(f"{name} must be a whole number of control steps, at least {least}, got {value!r}.")
        whole = (lambda value: None if value is None else int(value))  # numpy's integers as Python's
        self.policy, self.execution_horizon, self.initial_delay = policy, int(execution_horizon), int(inference_delay)
        self.max_delay, self.simulated_delay = whole(max_delay), whole(simulated_delay)
        self.delays: deque[int] = deque(maxlen=int(delay_window))  # measured, newest last
        self._chunk: dict | None = None
        self._horizon = self._index = self._waited = 0  # chunk length, next step to hand out, calls since the request
        self._pending: Future | None = None
        self._requests = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pi-rtc-request")
        self._lock = threading.Lock()
        self._closed = False

    @property
    def inference_delay(self) -> int:
        """The delay the next request sends, before the cap of the steps left in its chunk."""
        delay = max(self.delays, default=self.initial_delay)
        return delay if self.max_delay is None else min(delay, self.max_delay)

    def infer(self, obs: dict) -> dict:
        """The action for this control step: {"actions": [robot dims], ...}, each array of the chunk's answer at
        this step and its other fields as they are. Raises the error of a request that failed."""
        with self._lock:
            if self._closed:
                raise RuntimeError("This RealTimeChunkBroker is closed: make a new one.")
            if self._pending is not None:
                self._waited += 1
                self._take_answer_if_due()
            if self._chunk is None or (self._pending is None and self._index >= self._horizon):
                self._take_up(self.policy.infer(obs), 0)  # the first chunk (or one after a failed request): waited for
            if self._pending is None and self._index >= self.execution_horizon:
                self._request(obs)
                self._take_answer_if_due()
            step = _step(self._chunk, self._index)
            self._index += 1
            return step

    def reset(self) -> None:
        """Forgets the chunk (after the request in flight, if any, has ended) and resets the policy. The delays
        measured are kept: they describe the link and the model, not the episode."""
        with self._lock:
            self._settle()
            self.policy.reset()
            self._chunk, self._horizon, self._index = None, 0, 0

    def close(self) -> None:
        """Waits for the request in flight, if any, and stops the thread that sends requests."""
        with self._lock:
            self._settle()
            self._requests.shutdown(wait=True)
            self._closed = True

    def _request(self, obs: dict) -> None:
        """Asks for the next chunk in the background: `obs` (copied: the robot may reuse its arrays) with the
        actions not yet handed out and the delay estimate."""
        leftover = np.array(self._chunk["actions"][self._index :])
        request = {**_snapshot(obs), PREV_ACTIONS: leftover, INFERENCE_DELAY: min(self.inference_delay, len(leftover))}
        self._pending, self._waited = self._requests.submit(self.policy.infer, request), 0

    def _take_answer_if_due(self) -> None:
        """Takes up the answer in flight at its step k (the calls since the request) once it is there, or once
        `simulated_delay` steps have passed; waits for it when the current chunk has run out."""
        if self.simulated_delay is None:
            due = self._pending.done()
        else:
            due = self._waited >= self.simulated_delay
        if not (due or self._index >= self._horizon):
            return
        pending, self._pending = self._pending, None
        answer = pending.result()  # raises the request's error
        self.delays.append(self._waited)
        self._take_up(answer, self._waited)

    def _take_up(self, answer: dict, index: int) -> None:
        horizon = len(answer["actions"])
        if not self.execution_horizon < horizon:
            raise ValueError(f"execution_horizon={self.execution_horizon} leaves no actions of a {horizon}-step chunk to "
                             f"continue: it must be 1 to {horizon - 1}.")
        self._chunk, self._horizon, self._index = answer, horizon, index

    def _settle(self) -> None:
        if self._pending is not None:
            wait([self._pending])
            self._pending = None


class LocalPolicy:
    """openpi-client's policy interface over a model in this process: `infer(obs)` answers what `pi serve`
    would, a chunk {"actions" [H, robot dims] float32, "valid", "policy_timing"}, `prev_actions` and
    `inference_delay` included, through the server's own reading and checks, in the calling thread."""

    def __init__(self, model, processor, layout: Robot | None = None, seed: int | None = None, **generate_kwargs):
        """As `BatchingPolicy`: `layout` reads observations when the processor knows no robot; `seed` the flow
        noise; `generate_kwargs` (e.g. `num_steps`, `max_guidance_weight`) go to every `generate_actions`."""
        self.policy = BatchingPolicy(model, processor, layout, max_batch=1, seed=seed, **generate_kwargs)
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, folder, layout: Robot | None = None, device: str | None = None, **kwargs) -> "LocalPolicy":
        """A converted folder (model and processor), read as `pi serve` reads it: by its robot, else by `layout`
        (default: the "pi" preset); on `device` (default: cuda when available, else cpu)."""
        from transformers import AutoModel, AutoProcessor

        import modeling_pi  # noqa: F401  (registers "pi")

        processor = AutoProcessor.from_pretrained(folder)
        if processor.robot is None and layout is None:
            layout = preset("pi")
        model = AutoModel.from_pretrained(folder).to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if model.device.type == "cpu":
            model.optimize_for_cpu()  # the CPU kernel per product (modeling_pi/cpu_linears.py)
        return cls(model, processor, layout, **kwargs)

    def get_server_metadata(self) -> dict:
        """What `pi serve` sends on connect (as `WebsocketClientPolicy.get_server_metadata`)."""
        return self.policy.metadata()

    def infer(self, obs: dict) -> dict:
        with self._lock:
            return self.policy.infer_now(obs)

    def reset(self) -> None:
        pass


def _step(chunk: dict, index: int) -> dict:
    """Row `index` of every array of a chunk's answer (nested dicts included), other values as they are."""
    return {key: _step(value, index) if isinstance(value, dict)
            else value[index] if isinstance(value, np.ndarray) and value.ndim else value
            for key, value in chunk.items()}


def _snapshot(obs):
    """A copy of an observation's dicts and arrays, which a background request may read after `infer` returned."""
    if isinstance(obs, dict):
        return {key: _snapshot(value) for key, value in obs.items()}
    return obs.copy() if isinstance(obs, np.ndarray) else obs

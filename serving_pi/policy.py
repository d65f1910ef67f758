"""One model, many clients: requests are preprocessed and checked on their own, queued, and run in batches by
a single worker thread, so the weights are never used by two calls at once.

Each request is read by the processor's robot (`processing_pi.Robot`: the folder's own, or a preset's for a
folder without one) and processed (`PiProcessor`) as soon as it arrives, in a thread pool, then checked
alone as the model will see it: its prompt bounded in characters before tokenising, its state and its
model inputs finite in the dtype they are computed in (a state of 1e300 is finite in float64, infinite in
float32), its inputs passing the model's own input checks. A bad observation fails there, before it can
join a batch. The worker takes the oldest waiting request and whatever else is already waiting (up to
`max_batch`), concatenates their model inputs, calls `generate_actions` once and `post_process` once (each
row with its own observation's state, for the robot's conversions), and answers each request with its
row. Should a batch fail all the same, its requests are run again one by one, so that only the request
that caused it gets the error. A request whose caller stops waiting (its client disconnected) is taken
out of the queue at once: it is never computed and its inputs are released.
Flow noise is drawn per request, so a request's actions do not depend on which batch it ran in.

Real-time chunking (π0 / π0.5): an observation may carry `prev_actions` [L, robot action dims], the leftover
of the previous chunk in the robot's units exactly as this server answered it, aligned to the step the
observation was taken at, and `inference_delay` d (control steps the computation takes; default 0). The
leftover goes back through the processor's training direction (the robot's conversions relative to this
observation's state, normalisation, padding to the model's action dims), is padded with zeros to the chunk's
H steps, and the model continues it (`generate_actions(prev_actions=..., inference_delay=d,
execution_horizon=H − L)`). These are one value per row, so such requests batch together whatever their L
and d, but never with requests without them.

Written by hand: the batching, the per-request checks and the withdrawal of abandoned requests are this
server's policy; no serving library knows π's processor and model contract.
"""

import asyncio
import contextlib
import copy
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from modeling_pi.input_checks import check_flow_inputs, check_inputs
from processing_pi import Robot

logger = logging.getLogger(__name__)

DEFAULT_MAX_PROMPT_CHARS = 4096  # openpi's prompts are tens of characters; π0.5 reads at most 200 tokens
PREV_ACTIONS, INFERENCE_DELAY = "prev_actions", "inference_delay"  # the observation keys of real-time chunking


@dataclass(eq=False)  # compared by identity: a request is withdrawn from the queue as itself
class _Request:
    inputs: dict  # the keyword arguments of `generate_actions` that take one row per request
    robot_state: np.ndarray
    noise: torch.Tensor | None
    arrived: float
    answer: asyncio.Future


class BatchingPolicy:
    def __init__(self, model, processor, layout: Robot | None = None, max_batch: int = 8, seed: int | None = None,
                 max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS, **generate_kwargs):
        """`layout`: how to read observations when the processor has no robot of its own (`serving_pi.preset`).
        `max_prompt_chars`: longer prompts are refused before tokenising. Raises `ValueError` when the processor
        cannot turn the model's output into robot actions (e.g. π0-FAST without its robot's action dims)."""
        if layout is not None:
            processor = copy.copy(processor)
            processor.robot = layout
        elif processor.robot is None:
            raise ValueError("The processor knows no robot: pass a layout (serving_pi.preset(...)), or convert the "
                             "model with --config or --robot.")
        if max_prompt_chars < 1:
            raise ValueError(f"max_prompt_chars must be at least 1, got {max_prompt_chars}.")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}.")
        default_prompt = processor.robot.default_prompt
        if default_prompt is not None and len(default_prompt) > max_prompt_chars:
            raise ValueError(f"The default prompt has {len(default_prompt)} characters, more than max_prompt_chars="
                             f"{max_prompt_chars}.")
        check_post_processing(model.config, processor)
        self.model, self.processor = model.eval(), processor
        self.robot_action_dims = robot_action_dims(model.config, processor)
        self.max_batch, self.max_prompt_chars = max_batch, max_prompt_chars
        self.compute_dtype = model.dtype
        self.generate_kwargs = generate_kwargs
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else torch.Generator()
        self.stats = Counter()  # computed, abandoned (caller left), withdrawn (left the queue uncomputed), retried
        self._waiting: deque[_Request] = deque()
        self._arrival: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._model_thread: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task | None = None

    def metadata(self) -> dict:
        """The robot's own metadata (openpi's `policy_metadata`, e.g. ALOHA's `reset_pose`) and the server's."""
        config, robot = self.model.config, self.processor.robot
        return {**robot.metadata, "variant": config.variant, "action_horizon": config.action_horizon,
                "image_keys": list(config.image_keys), "max_batch": self.max_batch, "robot": robot.name,
                "observation_layout": robot.describe(), "max_prompt_chars": self.max_prompt_chars,
                "real_time_chunking": config.is_flow, "rtc_max_delay": config.rtc_max_delay}

    @property
    def waiting(self) -> int:
        """Requests queued for the model, not yet in a batch."""
        return len(self._waiting)

    def start(self) -> None:
        """Starts the worker on the running event loop, and the one thread that runs the model."""
        self._arrival, self._idle = asyncio.Event(), asyncio.Event()
        self._idle.set()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pi-model")
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """After the queue is empty and the last batch answered: stops the worker and the model thread."""
        await self._idle.wait()
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._model_thread.shutdown(wait=True)

    async def infer(self, observation) -> dict:
        """One observation -> {"actions" [H, robot dims] float32, "valid", "policy_timing"}. An unreadable
        observation raises `ObservationError` / `ValueError` naming the problem. Cancelled (its caller gone),
        the request is withdrawn: not preprocessed if it had not begun, not computed if still queued."""
        arrived = time.monotonic()
        loop = asyncio.get_running_loop()
        request = None
        try:
            inputs, robot_state = await loop.run_in_executor(None, self._preprocess, observation)
            request = _Request(inputs, robot_state, self._noise(), arrived, loop.create_future())
            self._enqueue(request)
            return await request.answer
        except asyncio.CancelledError:
            self.stats["abandoned"] += 1
            if request is not None:
                self._withdraw(request)
            raise

    def infer_now(self, observation) -> dict:
        """`infer` in the calling thread, alone: no queue, no batch, checked and answered the same way. For a
        policy that no server runs (`serving_pi.LocalPolicy`): the model is used by the caller's thread."""
        if self._worker is not None and not self._worker.done():
            raise RuntimeError("This policy is being served: its model runs on the server's thread; use infer.")
        inputs, robot_state = self._preprocess(observation)
        return self._generate([_Request(inputs, robot_state, self._noise(), time.monotonic(), None)])[0]

    # ---- one request, alone ------------------------------------------------------------------

    def _preprocess(self, observation) -> tuple[dict, np.ndarray]:
        """observation -> (model inputs, its state as the robot reads it), checked as the model will see them.
        With `prev_actions`, the inputs hold the row's real-time-chunking options as well."""
        fields = self.processor.robot.read(observation)
        self._check_prompt(fields["prompt"])
        robot_state = fields["state"]
        self._check_state(robot_state)
        continued = read_continuation(observation, self.model.config, self.robot_action_dims)
        inputs = dict(self.processor(images={camera: [image] for camera, image in fields["images"].items()},
                                     prompt=[fields["prompt"]], state=robot_state[None], return_tensors="pt"))
        if continued is not None:  # normalised as training targets are, without the targets' tokens (knowledge insulation)
            leftover = self.processor.normalize_actions(self.processor.robot.from_robot(continued[0][None], robot_state[None]))
            inputs.update(continuation_inputs(torch.from_numpy(leftover), continued[1], self.model.config.action_horizon))
        self._check_inputs(inputs)
        return inputs, robot_state

    def _check_prompt(self, prompt: str) -> None:
        if len(prompt) > self.max_prompt_chars:
            raise ValueError(f"The prompt has {len(prompt)} characters; this server takes at most "
                             f"{self.max_prompt_chars} (--max-prompt-chars).")

    def _check_state(self, robot_state: np.ndarray) -> None:
        """The state comes back into float32 actions (delta actions add it): it must be finite there."""
        with np.errstate(over="ignore"):
            in_float32 = robot_state.astype(np.float32)
        if not np.isfinite(in_float32).all():
            raise ValueError(f"The state holds values beyond float32's range (±{np.finfo(np.float32).max:.3g}), "
                             "the precision the server computes and answers in.")

    def _check_inputs(self, inputs: dict) -> None:
        """The model inputs of one request: finite in the dtype the model computes in, and within the model's
        contract (`modeling_pi.input_checks`), so that a batch they join cannot fail because of them."""
        for name, tensor in inputs.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor.to(self.compute_dtype)).all():
                raise ValueError(f"After preprocessing, {name} holds NaN or values beyond the range of {self.compute_dtype}, "
                                 "the dtype the model computes in: the observation is out of range.")
        config = self.model.config
        check_inputs(config, inputs["pixel_values"], inputs["pixel_attention_mask"], inputs["input_ids"],
                     inputs["attention_mask"])
        if config.is_flow:
            check_flow_inputs(config, 1, inputs.get("state"), prev_actions=inputs.get(PREV_ACTIONS))

    def _noise(self) -> torch.Tensor | None:
        if not self.model.config.is_flow or "noise" in self.generate_kwargs:
            return None
        config = self.model.config
        return torch.randn(1, config.action_horizon, config.action_dim, generator=self.generator)

    # ---- the queue ---------------------------------------------------------------------------

    def _enqueue(self, request: _Request) -> None:
        self._waiting.append(request)
        self._idle.clear()
        self._arrival.set()

    def _withdraw(self, request: _Request) -> None:
        """Takes a request whose caller left out of the queue; one already in a batch runs, unanswered."""
        with contextlib.suppress(ValueError):
            self._waiting.remove(request)
            self.stats["withdrawn"] += 1

    async def _next_batch(self) -> list[_Request]:
        """The oldest waiting request and the next ones of its kind (the same model inputs: with real-time
        chunking or without), up to `max_batch`; the others keep their places in the queue."""
        while not self._waiting:
            self._idle.set()
            self._arrival.clear()
            await self._arrival.wait()
        kind = self._waiting[0].inputs.keys()
        batch = [request for request in self._waiting if request.inputs.keys() == kind][: self.max_batch]
        for request in batch:
            self._waiting.remove(request)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._compute(batch)
            except Exception:  # never the worker's end: _compute settles every request it can
                logger.exception("answering a batch failed")

    async def _compute(self, batch: list[_Request]) -> None:
        """Runs a batch; should it fail, runs its requests one by one, so only the culprit gets the error."""
        loop = asyncio.get_running_loop()
        try:
            answers = await loop.run_in_executor(self._model_thread, self._generate, batch)
        except Exception as err:
            if len(batch) == 1:
                self._settle(batch[0], error=err)
                return
            logger.warning("a batch of %d requests failed (%s: %s); running them one by one", len(batch),
                           type(err).__name__, err)
            for request in batch:
                if request.answer.done():  # its client left meanwhile
                    continue
                self.stats["retried"] += 1
                try:
                    self._settle(request, (await loop.run_in_executor(self._model_thread, self._generate, [request]))[0])
                except Exception as alone:
                    self._settle(request, error=alone)
            return
        for request, answer in zip(batch, answers):
            self._settle(request, answer)

    def _settle(self, request: _Request, answer: dict | None = None, error: Exception | None = None) -> None:
        """Answers `request`. A flow model's chunk that is not finite is an error, never sent: openpi's clients do not
        read `valid`, and would hand the robot NaN commands (π0-FAST's undecodable chunks are openpi's fallback)."""
        if request.answer.done():  # a client that left has cancelled its answer
            return
        if error is None and not answer["valid"] and self.model.config.is_flow:
            error = ValueError("The chunk holds NaN or inf values, so it is not a prediction and is not sent. The inputs "
                               "were finite: values of extreme size (prev_actions, or a state far outside the "
                               "statistics) overflow inside the model.")
        if error is not None:
            request.answer.set_exception(error)
        else:
            request.answer.set_result(answer)

    # ---- the model thread --------------------------------------------------------------------

    def _generate(self, batch: list[_Request]) -> list[dict]:
        started = time.monotonic()
        inputs = {name: torch.cat([request.inputs[name] for request in batch]) for name in batch[0].inputs}
        options = dict(self.generate_kwargs)
        if batch[0].noise is not None:
            options["noise"] = torch.cat([request.noise for request in batch])
        device = self.model.device
        # guidance towards prev_actions differentiates through the action expert, which inference mode rules out
        with torch.no_grad() if PREV_ACTIONS in inputs else torch.inference_mode():
            generated = self.model.generate_actions(**{k: v.to(device) for k, v in inputs.items()},
                                                    **{k: v.to(device) if torch.is_tensor(v) else v for k, v in options.items()})
        out = self.processor.post_process(generated.cpu(), robot_state=np.stack([request.robot_state for request in batch]))
        self.stats["computed"] += len(batch)
        infer_ms = (time.monotonic() - started) * 1000
        actions, valid = out.actions.numpy(), out.valid.numpy()  # float32, `valid` checked finite in it
        return [
            {"actions": actions[i], "valid": bool(valid[i]),
             "policy_timing": {"infer_ms": infer_ms, "queue_ms": (started - request.arrived) * 1000, "batch_size": len(batch)}}
            for i, request in enumerate(batch)
        ]


def robot_action_dims(config, processor) -> int | None:
    """The action dims of the chunks a flow model's policy answers with: the model's `action_dim` cut to the
    processor's robot action dims by `post_process`, then to the robot's by `Robot.to_robot`. None for π0-FAST."""
    if not config.is_flow:
        return None
    dims = processor.robot_action_dim_source()[0] or config.action_dim
    return min(dims, processor.robot.action_dim or dims)


def read_continuation(observation: dict, config, action_dims: int | None) -> tuple[np.ndarray, int] | None:
    """An observation's real-time-chunking keys, checked: (`prev_actions` [L, robot action dims] float64 in the
    robot's units, `inference_delay` d), or None when it carries neither. L is H − s, 1 to H − 1 (s, the steps
    executed from the previous chunk, is at least 1), and 0 <= d <= L (d + s <= H); a model trained with a clean
    prefix takes d up to its `rtc_max_delay`. A `ValueError` names what is wrong."""
    prev_actions, delay = observation.get(PREV_ACTIONS), observation.get(INFERENCE_DELAY)
    if prev_actions is None and delay is None:
        return None
    if not config.is_flow:
        raise ValueError(f"π0-FAST does not support real-time chunking: send observations without {PREV_ACTIONS} and "
                         f"{INFERENCE_DELAY} (the server's metadata says real_time_chunking: false).")
    if prev_actions is None:
        raise ValueError(f"{INFERENCE_DELAY} was sent without {PREV_ACTIONS}: it is the delay of a chunk that "
                         "continues the previous one; send both, or neither.")
    horizon = config.action_horizon
    prev_actions = np.asarray(prev_actions)
    expected = f"[L, {action_dims}] numbers with 1 <= L <= {horizon - 1}"
    if prev_actions.dtype.kind not in "iuf" or prev_actions.ndim != 2 or prev_actions.shape[1] != action_dims:
        raise ValueError(f"{PREV_ACTIONS} must be the previous chunk's actions not yet executed, {expected} (the robot's "
                         f"action dims), got {prev_actions.dtype} {list(prev_actions.shape)}.")
    if not 1 <= len(prev_actions) < horizon:
        raise ValueError(f"{PREV_ACTIONS} holds {len(prev_actions)} actions; it must hold 1 to {horizon - 1}: the "
                         f"{horizon}-step chunk less the s >= 1 steps executed from it (execution_horizon = {horizon} - L).")
    prev_actions = prev_actions.astype(np.float64)
    if not np.isfinite(prev_actions).all():
        raise ValueError(f"{PREV_ACTIONS} holds NaN or infinite values.")
    delay = 0 if delay is None else delay
    if isinstance(delay, (bool, np.bool_)) or np.asarray(delay).dtype.kind not in "iu" or np.ndim(delay) != 0:
        raise ValueError(f"{INFERENCE_DELAY} must be a whole number of control steps, got {delay!r}.")
    delay = int(delay)
    if not 0 <= delay <= len(prev_actions):
        raise ValueError(f"{INFERENCE_DELAY} must be 0 to the {len(prev_actions)} {PREV_ACTIONS} sent (inference_delay + "
                         f"execution_horizon <= action_horizon = {horizon}), got {delay}.")
    if config.rtc_max_delay and delay > config.rtc_max_delay:
        raise ValueError(f"This model was trained with clean prefixes of at most {config.rtc_max_delay} steps "
                         f"(rtc_max_delay): {INFERENCE_DELAY} must be at most that, got {delay}.")
    return prev_actions, delay


def continuation_inputs(prev_actions: torch.Tensor, delay: int, horizon: int) -> dict:
    """One row's real-time-chunking options of `generate_actions`, from its leftover actions [1, L, D] as the
    processor normalised and padded them: `prev_actions` [1, H, D] (zeros after L, where the guidance weight
    is 0), `inference_delay` [1] and `execution_horizon` [1] = H − L."""
    leftover = prev_actions.shape[1]
    return {PREV_ACTIONS: torch.nn.functional.pad(prev_actions, (0, 0, 0, horizon - leftover)),
            INFERENCE_DELAY: torch.tensor([delay]), "execution_horizon": torch.tensor([horizon - leftover])}


def check_post_processing(config, processor) -> None:
    """At startup: a π0-FAST folder whose processor cannot turn tokens into robot actions (no horizon or robot
    action dims) is an error here rather than in every request, after a full decode. Flow chunks always can."""
    if config.is_flow:
        return
    try:
        processor.fast_chunk_shape()
    except ValueError as err:
        raise ValueError(f"The server cannot turn this model's output into robot actions: {err}") from None

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


@dataclass(eq=False)  # compared by identity: a request is withdrawn from the queue as itself
class _Request:
    inputs: dict
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
        default_prompt = processor.robot.default_prompt
        if default_prompt is not None and len(default_prompt) > max_prompt_chars:
            raise ValueError(f"The default prompt has {len(default_prompt)} characters, more than max_prompt_chars="
                             f"{max_prompt_chars}.")
        check_post_processing(model.config, processor)
        self.model, self.processor = model.eval(), processor
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
                "observation_layout": robot.describe(), "max_prompt_chars": self.max_prompt_chars}

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

    # ---- one request, alone ------------------------------------------------------------------

    def _preprocess(self, observation) -> tuple[dict, np.ndarray]:
        """observation -> (model inputs, its state as the robot reads it), checked as the model will see them."""
        fields = self.processor.robot.read(observation)
        self._check_prompt(fields["prompt"])
        robot_state = fields["state"]
        self._check_state(robot_state)
        inputs = dict(self.processor(images={camera: [image] for camera, image in fields["images"].items()},
                                     prompt=[fields["prompt"]], state=robot_state[None], return_tensors="pt"))
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
            check_flow_inputs(config, 1, inputs.get("state"))

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
        while not self._waiting:
            self._idle.set()
            self._arrival.clear()
            await self._arrival.wait()
        return [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]

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

    @staticmethod
    def _settle(request: _Request, answer: dict | None = None, error: Exception | None = None) -> None:
        if request.answer.done():  # a client that left has cancelled its answer
            return
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
        with torch.inference_mode():
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


def check_post_processing(config, processor) -> None:
    """At startup: a π0-FAST folder whose processor cannot turn tokens into robot actions (no horizon or robot
    action dims) is an error here rather than in every request, after a full decode. Flow chunks always can."""
    if config.is_flow:
        return
    try:
        processor.fast_chunk_shape()
    except ValueError as err:
        raise ValueError(f"The server cannot turn this model's output into robot actions: {err}") from None

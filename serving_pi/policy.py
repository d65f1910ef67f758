"""One model, many clients: requests are preprocessed on their own, queued, and run in batches by a single
worker thread, so the weights are never used by two calls at once.

Each request is read by the processor's robot (`processing_pi.Robot`: the folder's own, or a preset's for a
folder without one) and processed (`PiProcessor`) as soon as it arrives, in a thread pool: a bad observation
fails alone, before it can join a batch. The worker takes the oldest
waiting request and whatever else is already waiting (up to `max_batch`), concatenates their model
inputs, calls `generate_actions` once and `post_process` once (each row with its own observation's state, for
the robot's conversions), and answers each request with its row.
Flow noise is drawn per request, so a request's actions do not depend on which batch it ran in.
"""

import asyncio
import copy
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from processing_pi import Robot


@dataclass
class _Request:
    inputs: dict
    robot_state: np.ndarray
    noise: torch.Tensor | None
    arrived: float
    answer: asyncio.Future


class BatchingPolicy:
    def __init__(self, model, processor, layout: Robot | None = None, max_batch: int = 8, seed: int | None = None,
                 **generate_kwargs):
        """`layout`: how to read observations when the processor has no robot of its own (`serving_pi.preset`)."""
        if layout is not None:
            processor = copy.copy(processor)
            processor.robot = layout
        elif processor.robot is None:
            raise ValueError("The processor knows no robot: pass a layout (serving_pi.preset(...)), or convert the "
                             "model with --config or --robot.")
        self.model, self.processor = model.eval(), processor
        self.max_batch = max_batch
        self.generate_kwargs = generate_kwargs
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else torch.Generator()
        self._queue: asyncio.Queue[_Request] | None = None
        self._model_thread: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task | None = None

    def metadata(self) -> dict:
        """The robot's own metadata (openpi's `policy_metadata`, e.g. ALOHA's `reset_pose`) and the server's."""
        config, robot = self.model.config, self.processor.robot
        return {**robot.metadata, "variant": config.variant, "action_horizon": config.action_horizon,
                "image_keys": list(config.image_keys), "max_batch": self.max_batch, "robot": robot.name,
                "observation_layout": robot.describe()}

    def start(self) -> None:
        """Starts the worker on the running event loop, and the one thread that runs the model."""
        self._queue = asyncio.Queue()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pi-model")
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """After the queue is empty: stops the worker and the model thread."""
        await self._queue.join()
        self._worker.cancel()
        self._model_thread.shutdown(wait=True)

    async def infer(self, observation) -> dict:
        """One observation -> {"actions" [H, robot dims] float32, "valid", "policy_timing"}. An unreadable
        observation raises `ObservationError` / `ValueError` naming the problem."""
        arrived = time.monotonic()
        loop = asyncio.get_running_loop()
        inputs, robot_state = await loop.run_in_executor(None, self._preprocess, observation)
        noise = None
        if self.model.config.is_flow and "noise" not in self.generate_kwargs:
            config = self.model.config
            noise = torch.randn(1, config.action_horizon, config.action_dim, generator=self.generator)
        request = _Request(inputs, robot_state, noise, arrived, loop.create_future())
        self._queue.put_nowait(request)
        return await request.answer

    def _preprocess(self, observation) -> tuple[dict, np.ndarray]:
        """observation -> (model inputs, its state as the robot reads it)."""
        inputs = dict(self.processor(observation=observation, return_tensors="pt"))
        return inputs, self.processor.robot.state(observation)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                answers = await loop.run_in_executor(self._model_thread, self._generate, batch)
                for request, answer in zip(batch, answers):
                    if not request.answer.done():  # a client that left has cancelled its answer
                        request.answer.set_result(answer)
            except Exception as err:  # a failure of the batch is every request's failure, never the server's
                for request in batch:
                    if not request.answer.done():
                        request.answer.set_exception(err)
            finally:
                for _ in batch:
                    self._queue.task_done()

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
        infer_ms = (time.monotonic() - started) * 1000
        return [
            {"actions": out.actions[i].numpy().astype(np.float32), "valid": bool(out.valid[i]),
             "policy_timing": {"infer_ms": infer_ms, "queue_ms": (started - request.arrived) * 1000, "batch_size": len(batch)}}
            for i, request in enumerate(batch)
        ]

"""`pi serve`: a websocket policy server speaking openpi's protocol, so that
`openpi_client.websocket_client_policy.WebsocketClientPolicy` drives it unchanged.

    pi serve --model FOLDER [--host 127.0.0.1] [--port 8000] [--preset pi|aloha|droid|libero]
             [--camera MODEL_CAMERA=OBSERVATION_KEY]... [--state-key KEY]... [--prompt-key KEY]
             [--default-prompt TEXT] [--max-batch N] [--num-steps N] [--max-message-mb N]
             [--max-prompt-chars N] [--max-guidance-weight B] [--prefix-schedule exp|linear|ones|zeros]
             [--device DEVICE]

A folder converted with `--config` or `--robot` knows its robot: the server reads that robot's raw
observations and answers in its commands with no flags (`--prompt-key` and `--default-prompt` may still
override). For other folders, `--preset` (default `pi`), `--camera` and `--state-key` say how to read them.

The protocol (openpi's): on connect the server sends its metadata (msgpack: the policy's own, such as
ALOHA's `reset_pose`, and the server's); then each binary msgpack message is one observation and is
answered with a dict holding `actions` [H, robot dims] and the timings (`policy_timing`,
`server_timing`), plus `valid` (False where a π0-FAST answer did not decode into actions; they are then
openpi's fallback, not a prediction). A π0 / π0.5 chunk holding NaN or inf is never sent: openpi's clients do
not read `valid`, so the request is answered with an error instead. For real-time chunking (π0 / π0.5; the metadata's
`real_time_chunking`), an observation may also carry `prev_actions` [L, robot dims], the previous chunk's
actions not yet executed as this server returned them, and `inference_delay` (control steps); the new
chunk then continues them (`serving_pi.policy`; the client side is `serving_pi.real_time`), guided with
`--max-guidance-weight` and `--prefix-schedule` (default 5 and exp; a model trained with clean prefixes
keeps its prefix instead). A request
that cannot be served is answered with a text message naming the problem, which the client raises as
an error; the connection stays open.
Messages larger than `--max-message-mb` close that connection (code 1009); other clients are not
affected. Prompts longer than `--max-prompt-chars` (default 4096) are refused before tokenising. Each
request is checked on its own before it joins a batch, and a failed batch is run again request by
request, so one client's bad input is that client's error only (`serving_pi.policy`). A request whose
client disconnects before its answer is withdrawn: not computed, its inputs released. A folder whose
model output the server cannot turn into robot actions (π0-FAST without its robot's action dims) is
refused at startup. `GET /healthz` answers 200 while serving and 503 while shutting down. On SIGTERM
or SIGINT the server drains: it refuses new connections (HTTP 503) and new requests, answers every
request it has received, then closes the connections, stops listening and exits.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus

import websockets
from websockets.asyncio.server import ServerConnection, serve

from modeling_pi.input_checks import check_device, check_source
from modeling_pi.real_time_chunking import SCHEDULES

from .observations import PRESETS, preset
from .policy import DEFAULT_MAX_PROMPT_CHARS, BatchingPolicy
from .wire import packb, unpackb

logger = logging.getLogger(__name__)
HEALTH_PATH = "/healthz"


class PolicyServer:
    def __init__(self, policy: BatchingPolicy, host: str = "127.0.0.1", port: int = 8000, max_message_bytes: int = 32 << 20):
        self.policy, self.host, self.port, self.max_message_bytes = policy, host, port, max_message_bytes
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()

    async def serve(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Serves until `stop` is set, then drains: answers what was received, closes, returns."""
        self.policy.start()
        self._idle.set()
        async with serve(self._client, self.host, self.port, compression=None, max_size=self.max_message_bytes,
                         process_request=self._health) as server:
            self.port = server.sockets[0].getsockname()[1]  # the port bound, when 0 asked for any
            logger.info("serving %s on ws://%s:%d", self.policy.metadata()["variant"], self.host, self.port)
            if ready is not None:
                ready.set()
            await stop.wait()
            self.draining = True  # new connections get 503, new requests a refusal; received ones are answered
            await self._idle.wait()
            await self.policy.stop()
            server.close(close_connections=False)
            await asyncio.gather(*(connection.close(1001, "the server is shutting down") for connection in server.connections))
            await server.wait_closed()

    def _health(self, connection: ServerConnection, request):
        """`/healthz`: 200, or 503 while draining; while draining, websocket handshakes get 503 as well."""
        if self.draining:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
        if request.path == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, "OK\n")
        return None

    async def _client(self, connection: ServerConnection) -> None:
        await connection.send(packb(self.policy.metadata()))
        previous_total_ms = None
        try:
            async for message in connection:
                started = time.monotonic()
                reply = await self._answer_while_connected(connection, message)
                if reply is None:  # the client left; its request was withdrawn
                    return
                if isinstance(reply, dict):
                    reply["server_timing"] = {"infer_ms": (time.monotonic() - started) * 1000}
                    if previous_total_ms is not None:
                        reply["server_timing"]["prev_total_ms"] = previous_total_ms
                    reply = packb(reply)
                await connection.send(reply)
                previous_total_ms = (time.monotonic() - started) * 1000
        except websockets.ConnectionClosed:
            pass

    async def _answer_while_connected(self, connection: ServerConnection, message) -> dict | str | None:
        """The reply to `message`, or None if the client closes its connection first: its request is then
        cancelled, so the policy never computes it (see `BatchingPolicy.infer`)."""
        answer = asyncio.ensure_future(self._answer(message))
        gone = asyncio.ensure_future(connection.wait_closed())
        try:
            await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not answer.done():
                answer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await answer
        return None if answer.cancelled() else answer.result()

    async def _answer(self, message) -> dict | str:
        """The reply to one message: the policy's answer, or a text naming what was wrong with it."""
        self._in_flight += 1
        self._idle.clear()
        try:
            if self.draining:
                return "The server is shutting down; this request was not run."
            if isinstance(message, str):
                return "Expected a binary msgpack message (an observation dict), got a text message."
            return await self.policy.infer(unpackb(message))
        except ValueError as err:  # WireError, ObservationError and the processor's checks
            return f"Bad request: {err}"
        except Exception as err:  # the model failed: this request's error, not the server's end
            logger.exception("inference failed")
            return f"Internal error while running the policy: {type(err).__name__}: {err}"
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()


@contextmanager
def serve_in_background(policy: BatchingPolicy, host: str = "127.0.0.1", port: int = 0, **kwargs) -> Iterator[PolicyServer]:
    """A running `PolicyServer` (its own event loop, in a thread) for notebooks, tests and benchmarks;
    drained and stopped on exit. `server.port` is the port bound (a free one for port 0)."""
    server = PolicyServer(policy, host, port, **kwargs)
    handles, failures, started = {}, [], threading.Event()

    async def main() -> None:
        handles["loop"], handles["stop"], ready = asyncio.get_running_loop(), asyncio.Event(), asyncio.Event()
        serving = asyncio.create_task(server.serve(handles["stop"], ready))
        await asyncio.wait([serving, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
        started.set()
        await serving

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as err:
            failures.append(err)
            started.set()

    thread = threading.Thread(target=thread_main, name="pi-serve", daemon=True)
    thread.start()
    started.wait()
    if failures:
        raise failures[0]
    try:
        yield server
    finally:
        handles["loop"].call_soon_threadsafe(handles["stop"].set)
        thread.join()
        if failures:
            raise failures[0]


# ---- pi serve ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="π model folder with its processor")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--preset", choices=tuple(PRESETS),
                        help="observation layout of a common robot client, for a folder that declares no robot (default: pi)")
    parser.add_argument("--camera", action="append", metavar="MODEL_CAMERA=KEY",
                        help="map an observation key to a model camera (replaces the preset's cameras); repeat the "
                             "flag for each camera")
    parser.add_argument("--state-key", action="append", metavar="KEY",
                        help="an observation key of the state; repeat the flag for each, concatenated in order")
    parser.add_argument("--prompt-key", help="observation key of the prompt (default: prompt)")
    parser.add_argument("--default-prompt", help="prompt for observations that carry none")
    parser.add_argument("--max-batch", type=int, default=8, help="most requests run together on the model")
    parser.add_argument("--num-steps", type=int, help="flow steps (π0 / π0.5; default: the model's)")
    parser.add_argument("--seed", type=int, help="seed of the flow noise")
    parser.add_argument("--max-message-mb", type=float, default=32.0, help="larger messages close their connection")
    parser.add_argument("--max-prompt-chars", type=int, default=DEFAULT_MAX_PROMPT_CHARS,
                        help="longer prompts are refused before tokenising (default: %(default)s)")
    parser.add_argument("--max-guidance-weight", type=float,
                        help="real-time chunking: the guidance's largest weight β (default: 5; 0 turns guidance off)")
    parser.add_argument("--prefix-schedule", choices=SCHEDULES,
                        help="real-time chunking: how the weight of prev_actions decays past the delay (default: exp)")
    parser.add_argument("--device", help="where the model runs (default: cuda when available, else cpu)")
    return parser


def build_policy(args: argparse.Namespace) -> BatchingPolicy:
    from transformers import AutoModel, AutoProcessor

    import modeling_pi  # noqa: F401  (registers "pi")

    import torch

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0 (a free port) to 65535, got {args.port}.")
    if not (math.isfinite(args.max_message_mb) and args.max_message_mb > 0):
        raise ValueError(f"--max-message-mb must be a positive number, got {args.max_message_mb}.")
    check_source(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = AutoProcessor.from_pretrained(args.model)
    if args.prompt_key == "":
        raise ValueError("--prompt-key must name the observation's prompt key, got an empty one.")
    prompt = {key: value for key, value in (("prompt_key", args.prompt_key), ("default_prompt", args.default_prompt))
              if value is not None}  # an empty default prompt is a prompt, as an empty one in a request is
    if processor.robot is not None:
        if args.preset or args.camera or args.state_key:
            raise ValueError(f"{args.model} declares its robot ({processor.robot.name}); --preset, --camera and "
                             "--state-key are for folders that do not.")
        layout = dataclasses.replace(processor.robot, **prompt)
    else:
        cameras = None
        if args.camera:
            pairs = [spec.partition("=") for spec in args.camera]
            if any(not (camera and equals and key) for camera, equals, key in pairs):
                raise ValueError(f"--camera takes MODEL_CAMERA=KEY pairs, got {args.camera}.")
            doubled = sorted(camera for camera, count in Counter(camera for camera, _, _ in pairs).items() if count > 1)
            if doubled:
                raise ValueError(f"--camera gives the model camera(s) {', '.join(doubled)} twice.")
            cameras = {camera: key for camera, _, key in pairs}
        if cameras is None and (args.preset or "pi") == "pi":  # the model's own camera names
            cameras = {camera: camera for camera in processor.image_keys}
        layout = preset(args.preset or "pi", cameras=cameras, state_keys=args.state_key, **prompt)
    unknown = sorted(set(layout.cameras) - set(processor.image_keys))
    if unknown:
        raise ValueError(f"Camera(s) {', '.join(unknown)} are not the model's ({', '.join(processor.image_keys)}).")
    options = generation_options(args, is_flow=processor.variant != "pi0_fast")  # before the model loads
    check_device(device, "--device")
    model = AutoModel.from_pretrained(args.model).to(device)
    if model.device.type == "cpu":
        model.optimize_for_cpu()  # the CPU kernel per product (modeling_pi/cpu_linears.py)
    return BatchingPolicy(model, processor, layout, max_batch=args.max_batch, seed=args.seed,
                          max_prompt_chars=args.max_prompt_chars, **options)


def generation_options(args: argparse.Namespace, is_flow: bool) -> dict:
    """The flags' options of `generate_actions`, checked: a value no request could be served with is an error at
    startup (--max-batch 0 would leave every request queued)."""
    for flag, value in (("--max-batch", args.max_batch), ("--max-prompt-chars", args.max_prompt_chars)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}.")
    options = {}
    if args.num_steps is not None:
        if not is_flow:
            raise ValueError("--num-steps sets the flow steps; π0-FAST decodes tokens.")
        if args.num_steps < 1:
            raise ValueError(f"--num-steps must be at least 1, got {args.num_steps}.")
        options["num_steps"] = args.num_steps
    guidance = {"max_guidance_weight": args.max_guidance_weight, "prefix_schedule": args.prefix_schedule}
    guidance = {name: value for name, value in guidance.items() if value is not None}
    if guidance and not is_flow:
        raise ValueError("--max-guidance-weight and --prefix-schedule set real-time chunking, which π0-FAST does not support.")
    weight = guidance.get("max_guidance_weight", 0.0)
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"--max-guidance-weight must be a finite number >= 0, got {args.max_guidance_weight}.")
    return {**options, **guidance}


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        policy = build_policy(args)
    except (OSError, ValueError) as err:
        print(f"pi serve: error: {err}", file=sys.stderr)
        return 1
    server = PolicyServer(policy, args.host, args.port, int(args.max_message_mb * (1 << 20)))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await server.serve(stop)

    try:
        asyncio.run(main())
    except OSError as err:  # the address: taken, not this machine's, or a host name that does not resolve
        print(f"pi serve: error: cannot serve on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    logger.info("stopped")
    return 0

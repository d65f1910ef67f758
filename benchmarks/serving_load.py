"""Load on the policy server: N openpi clients × M requests each over loopback, all at once; or one live
client while other clients connect, send one request and disconnect.

    python benchmarks/serving_load.py --model FOLDER [--clients 8] [--requests 20] [--max-batch 8]
                                      [--num-steps N] [--threads N] [--url ws://HOST:PORT]
    python benchmarks/serving_load.py --model FOLDER --leaving K [--requests 20] ...

Without `--url` the server is started in this process (`serve_in_background`, the model's own camera
names as the observation layout) on a free port of 127.0.0.1. Each client is `openpi-client`'s
`WebsocketClientPolicy` in its own thread, sending 224×224 uint8 images, a state and a prompt.
Prints the client-side latency (p50, p99, max), the throughput, the error count and the batch sizes
the server formed.

With `--leaving K`, one live client sends `--requests` requests one after another; before each, K other
clients (their own websocket connections, all at once) connect, send one observation and close without
waiting for the answer. Prints the live client's latency (p50, p99, max) and, for a server in this
process, how many requests the model computed (rows of `generate_actions`) against the live ones, and the
process's resident memory before and after. A server that computes requests whose client has gone
makes the live client wait behind them.
"""

import argparse
import platform
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import websockets.sync.client
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from transformers import AutoModel, AutoProcessor

import modeling_pi  # noqa: F401
from serving_pi import BatchingPolicy, preset, serve_in_background


def observation(rng: np.random.Generator, cameras: list[str], state_dim: int) -> dict:
    images = {camera: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for camera in cameras}
    return {**images, "state": rng.normal(size=state_dim), "prompt": "pick up the red block"}


def client_run(url_host: str, port: int, requests: int, cameras: list[str], state_dim: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    client = WebsocketClientPolicy(url_host, port)
    results = []
    for _ in range(requests):
        start = time.perf_counter()
        try:
            reply = client.infer(observation(rng, cameras, state_dim))
            results.append((time.perf_counter() - start, reply["policy_timing"]["batch_size"]))
        except Exception as err:  # counted, not fatal: the benchmark reports errors
            results.append((None, repr(err)))
    return results


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))] if sorted_values else float("nan")


def load(host: str, port: int, clients: int, requests: int, cameras: list[str], state_dim: int) -> None:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(lambda i: client_run(host, port, requests, cameras, state_dim, i), range(clients)))
    wall = time.perf_counter() - start
    done = [r for run in runs for r in run]
    latencies = sorted(seconds * 1000 for seconds, _ in done if seconds is not None)
    errors = [detail for seconds, detail in done if seconds is None]
    batches = Counter(detail for seconds, detail in done if seconds is not None)
    print(f"{clients} clients x {requests} requests: {len(latencies)} answered, {len(errors)} errors, {wall:.1f} s")
    if latencies:
        print(f"latency ms: p50 {statistics.median(latencies):.1f}  p99 {percentile(latencies, 0.99):.1f}  max {latencies[-1]:.1f}")
        print(f"throughput: {len(latencies) / wall:.1f} requests/s")
        print("batch sizes (requests that ran in a batch of n): " + ", ".join(f"{n}: {c}" for n, c in sorted(batches.items())))
    for detail in errors[:5]:
        print(f"error: {detail}")


def send_and_leave(host: str, port: int, payload: bytes) -> None:
    """A client that connects, sends one observation and closes without waiting for the answer."""
    with websockets.sync.client.connect(f"ws://{host}:{port}", compression=None, max_size=None) as connection:
        connection.recv()  # the server's metadata
        connection.send(payload)


def resident_mb() -> float:
    """This process's resident memory (Linux), MB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 1e6


class RowCounter:
    """Wraps `model.generate_actions` to count the requests (rows) the model computes."""

    def __init__(self, model):
        self.rows, self._generate = 0, model.generate_actions
        model.generate_actions = self

    def __call__(self, *args, **kwargs):
        self.rows += len(kwargs["pixel_values"] if "pixel_values" in kwargs else args[0])
        return self._generate(*args, **kwargs)


def leaving_load(host: str, port: int, requests: int, leaving: int, cameras: list[str], state_dim: int,
                 counter: RowCounter | None) -> None:
    rng = np.random.default_rng(0)
    payload = msgpack_numpy.packb(observation(rng, cameras, state_dim))
    live = WebsocketClientPolicy(host, port)
    live.infer(observation(rng, cameras, state_dim))  # warm-up, not counted
    rows_before, memory_before = (counter.rows if counter else 0), resident_mb()
    latencies, errors = [], []
    start = time.perf_counter()
    with ThreadPoolExecutor(max(leaving, 1)) as pool:
        for _ in range(requests):
            list(pool.map(lambda _: send_and_leave(host, port, payload), range(leaving)))
            sent = time.perf_counter()
            try:
                live.infer(observation(rng, cameras, state_dim))
                latencies.append((time.perf_counter() - sent) * 1000)
            except Exception as err:  # counted, not fatal
                errors.append(repr(err))
    wall = time.perf_counter() - start
    latencies.sort()
    print(f"1 live client x {requests} requests, {leaving} clients leaving before each ({leaving * requests} in all): "
          f"{len(latencies)} answered, {len(errors)} errors, {wall:.1f} s")
    if latencies:
        print(f"live latency ms: p50 {statistics.median(latencies):.1f}  p99 {percentile(latencies, 0.99):.1f}  max {latencies[-1]:.1f}")
    if counter is not None:
        print(f"requests computed by the model: {counter.rows - rows_before} (live: {len(latencies)}, "
              f"left: {leaving * requests})")
    print(f"resident memory: {memory_before:.0f} MB before, {resident_mb():.0f} MB after")
    for detail in errors[:5]:
        print(f"error: {detail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="π folder with its processor")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--leaving", type=int, help="one live client; before each of its requests, this many clients "
                                                    "connect, send one request and disconnect")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--num-steps", type=int, help="flow steps (default: the model's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--url", help="an already running server, ws://HOST:PORT (its layout must be the model's cameras)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    processor = AutoProcessor.from_pretrained(args.model)
    stats = processor.norm_stats
    state_dim = stats.state.dim if stats is not None and stats.state is not None else processor.action_dim
    cameras = list(processor.image_keys)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; model {args.model}")

    def run(host: str, port: int, counter: RowCounter | None = None) -> None:
        if args.leaving is not None:
            leaving_load(host, port, args.requests, args.leaving, cameras, state_dim, counter)
        else:
            load(host, port, args.clients, args.requests, cameras, state_dim)

    if args.url:
        host, _, port = args.url.removeprefix("ws://").rpartition(":")
        run(host, int(port))
        return
    model = AutoModel.from_pretrained(args.model)
    counter = RowCounter(model)
    options = {"num_steps": args.num_steps} if args.num_steps else {}
    policy = BatchingPolicy(model, processor, preset("pi"), max_batch=args.max_batch, **options)
    with serve_in_background(policy) as server:
        run("127.0.0.1", server.port, counter)


if __name__ == "__main__":
    main()

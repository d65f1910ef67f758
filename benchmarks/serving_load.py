"""Load on the policy server: N openpi clients × M requests each over loopback, all at once.

    python benchmarks/serving_load.py --model FOLDER [--clients 8] [--requests 20] [--max-batch 8]
                                      [--num-steps N] [--threads N] [--url ws://HOST:PORT]

Without `--url` the server is started in this process (`serve_in_background`, the model's own camera
names as the observation layout) on a free port of 127.0.0.1. Each client is `openpi-client`'s
`WebsocketClientPolicy` in its own thread, sending 224×224 uint8 images, a state and a prompt.
Prints the client-side latency (p50, p99, max), the throughput, the error count and the batch sizes
the server formed.
"""

import argparse
import platform
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
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


def load(host: str, port: int, clients: int, requests: int, cameras: list[str], state_dim: int) -> None:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(lambda i: client_run(host, port, requests, cameras, state_dim, i), range(clients)))
    wall = time.perf_counter() - start
    done = [r for run in runs for r in run]
    latencies = sorted(seconds * 1000 for seconds, _ in done if seconds is not None)
    errors = [detail for seconds, detail in done if seconds is None]
    batches = Counter(detail for seconds, detail in done if seconds is not None)
    p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))] if latencies else float("nan")
    print(f"{clients} clients x {requests} requests: {len(latencies)} answered, {len(errors)} errors, {wall:.1f} s")
    if latencies:
        print(f"latency ms: p50 {statistics.median(latencies):.1f}  p99 {p99:.1f}  max {latencies[-1]:.1f}")
        print(f"throughput: {len(latencies) / wall:.1f} requests/s")
        print("batch sizes (requests that ran in a batch of n): " + ", ".join(f"{n}: {c}" for n, c in sorted(batches.items())))
    for detail in errors[:5]:
        print(f"error: {detail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="π folder with its processor")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20)
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
    if args.url:
        host, _, port = args.url.removeprefix("ws://").rpartition(":")
        load(host, int(port), args.clients, args.requests, cameras, state_dim)
        return
    model = AutoModel.from_pretrained(args.model)
    options = {"num_steps": args.num_steps} if args.num_steps else {}
    policy = BatchingPolicy(model, processor, preset("pi"), max_batch=args.max_batch, **options)
    with serve_in_background(policy) as server:
        load("127.0.0.1", server.port, args.clients, args.requests, cameras, state_dim)


if __name__ == "__main__":
    main()

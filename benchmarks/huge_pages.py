"""π0's chunk on the CPU with and without huge pages for PyTorch's large allocations, ours and transformers'.

    python -m benchmarks.huge_pages [--size full] [--processes 2] [--repeats 3] [--steps 10] [--json out.json]

PyTorch's CPU allocator takes its memory from glibc's malloc, which maps every block above its mmap
threshold (at most 32 MiB) afresh, so each such block faults its pages in, 4 KiB at a time, at every use:
at full size, two 52 MB blocks in every MLP over the prefix. With `THP_MEM_ALLOC_ENABLE=1` PyTorch aligns
its allocations of 2 MiB and more and asks the kernel for transparent huge pages there (where
/sys/kernel/mm/transparent_hugepage/enabled says `madvise` or `always`), 2 MiB a fault. PyTorch reads the
variable once per process, so each setting runs in processes of its own: `--processes` pairs, the order
within a pair alternating (off, on; on, off; ...) so that a machine drifting one way tilts neither. Each
process builds transformers' PI0 and our π0 on one set of weights (`models.py`), runs one warm-up round and
`--repeats` timed rounds alternately, and counts each chunk's minor page faults. Printed per setting and
model: the median chunk, the median ratio to transformers' PI0 in the same rounds, page faults per chunk,
and the chunk relative to the same model without huge pages (the median, over pairs, of the two processes'
medians: across processes, so drift between them is not cancelled as it is within one).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

SETTINGS = {"off": {}, "on": {"THP_MEM_ALLOC_ENABLE": "1"}}
MODELS = ("ours", "transformers")


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(size: str, repeats: int, steps: int) -> dict:
    """In this process: both models' chunk times (seconds, per timed round) and page faults per chunk."""
    import torch  # here, not above: the parent process only starts the measuring ones

    from .harness import flow_generate
    from .models import make_inputs, sharing_weights, transformers_pi0
    from .timing import Clock, alternate

    torch.manual_seed(0)
    theirs = transformers_pi0(size)
    ours = sharing_weights(theirs, max_token_len=48)
    inputs = make_inputs(ours.config, 1, 3, 20, "cpu")
    faults = {name: [] for name in MODELS}

    def counted(name, fn):
        def run():
            before = minor_faults()
            fn()
            faults[name].append(minor_faults() - before)
        return run

    with torch.no_grad():
        clocks = {name: Clock(torch.device("cpu")) for name in MODELS}
        runs = {name: (clocks[name], counted(name, flow_generate(model, inputs, steps, clocks[name], name == "ours")))
                for name, model in (("ours", ours), ("transformers", theirs))}
        timings = alternate(runs, repeats, against=("transformers",))
    results = {name: {"rounds": timings[name]["rounds"], "ratios": [a / b for a, b in zip(timings[name]["rounds"],
                                                                                    timings["transformers"]["rounds"])],
                   "faults": faults[name][1:]} for name in MODELS}
    return {**results, "env": os.environ.get("THP_MEM_ALLOC_ENABLE"), "huge_page_kib": huge_page_kib()}


def huge_page_kib() -> int | None:
    """This process's anonymous memory in transparent huge pages now (Linux), to show the setting took."""
    try:
        with open("/proc/self/smaps_rollup") as file:
            return next(int(line.split()[1]) for line in file if line.startswith("AnonHugePages:"))
    except (OSError, StopIteration):
        return None


def run_process(setting: str, args) -> dict:
    """One child process under `setting`: its measurements."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS["on"]} | SETTINGS[setting]
    command = [sys.executable, "-m", "benchmarks.huge_pages", "--child", "--size", args.size,
               "--repeats", str(args.repeats), "--steps", str(args.steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {setting!r} process failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(processes: list[dict]) -> list[dict]:
    """Rows per setting and model from the processes' results ({"setting", "pair", "results"} each)."""
    rows = []
    for setting in SETTINGS:
        mine = [p for p in processes if p["setting"] == setting]
        for name in MODELS:
            rounds = [t for p in mine for t in p["results"][name]["rounds"]]
            pairs = [(statistics.median(p["results"][name]["rounds"]),
                      statistics.median(q["results"][name]["rounds"]))
                     for p in mine for q in processes if q["setting"] == "off" and q["pair"] == p["pair"]]
            rows.append({"setting": setting, "model": name, "chunk_s": statistics.median(rounds),
                         "ratio_to_transformers": statistics.median(r for p in mine for r in p["results"][name]["ratios"]),
                         "faults": statistics.median(f for p in mine for f in p["results"][name]["faults"]),
                         "ratio_to_off": statistics.median(a / b for a, b in pairs)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| THP_MEM_ALLOC_ENABLE | model | chunk s | × transformers | page faults per chunk | × without |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {'1' if r['setting'] == 'on' else 'unset'} | {r['model']} | {r['chunk_s']:.2f} | "
              f"{r['ratio_to_transformers']:.2f} | {r['faults']:.0f} | {r['ratio_to_off']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.huge_pages", description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="full", help="a size of benchmarks.models.SIZES")
    parser.add_argument("--processes", type=int, default=2, help="pairs of processes, one per setting in each")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per process")
    parser.add_argument("--steps", type=int, default=10, help="flow steps per chunk")
    parser.add_argument("--json", help="also write every process's rounds here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.size, args.repeats, args.steps)))
        return None

    processes = []
    for pair in range(args.processes):
        for setting in (list(SETTINGS) if pair % 2 == 0 else list(SETTINGS)[::-1]):
            processes.append({"setting": setting, "pair": pair, "results": run_process(setting, args)})
            print(f"pair {pair}, huge pages {setting}: " + ", ".join(
                f"{name} {statistics.median(processes[-1]['results'][name]['rounds']):.2f} s" for name in MODELS), flush=True)
    rows = summary(processes)
    print(f"\n{args.size}, float32, π0, 3 cameras, {args.steps} flow steps; {args.processes} pairs of processes, "
          f"{args.repeats} rounds each\n\n{table(rows)}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"size": args.size, "steps": args.steps, "processes": processes, "rows": rows}, file, indent=1)
    return rows


if __name__ == "__main__":
    main()

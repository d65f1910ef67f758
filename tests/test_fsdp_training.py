"""`pi train` under FSDP2 with `training_pi/accelerate/fsdp.yaml`: two CPU processes over gloo, each holding half of
every weight, end with the weights a single process reaches on the same global batches.

The two runs see the same data and compute the same loss:

- `--batch-size` is per process: 2 each against 4. Both runs draw one permutation of the frames (accelerate's
  `SeedableRandomSampler`, seeded with `--seed`); with two processes accelerate cuts it into batches of 2 and deals
  them out in turn, so at step k rank 0 gets permuted frames 4k, 4k+1 and rank 1 gets 4k+2, 4k+3: the single
  process's batch of 4 (asserted from the frames each run recorded).
- FSDP averages the processes' gradients, so the step follows the mean of the two halves' losses; that is the
  whole batch's loss when each half weighs its steps as the whole does. A process's loss is the mean over its
  non-padded action steps, so the runs train on frames without padded steps (`WholeChunks`).
- Noise and flow times come from each process's random state, seeded alike on every rank: two processes draw the
  same numbers for different halves, and not those a single process draws for the whole. Both runs draw them per
  frame instead (`SameDraws`).

What remains is float32 arithmetic in another order (two half-batch gradients averaged, against one): the weights
agree to `ATOL`, while training moved them by over 100 times that.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

import ddp_train_worker
import modeling_pi  # noqa: F401  (registers "pi" with AutoModel)
import pi_cli
import test_lerobot_training as lerobot
from training_pi import train

MAP_ARGS = lerobot.MAP_ARGS
dataset_root, model_folder = lerobot.dataset_root, lerobot.model_folder  # fixtures: a LeRobot dataset, a tiny π0.5

CONFIG = Path(__file__).resolve().parents[1] / "training_pi" / "accelerate" / "fsdp.yaml"
ATOL = 5e-5  # observed: 4e-6 after 4 steps at learning rate 1e-2


def _launch_fsdp(*args: str) -> subprocess.CompletedProcess:
    """Two CPU processes over gloo with the FSDP config; `--fsdp-on-cpu` makes accelerate shard on CPUs as on GPUs."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "--num_processes", "2",
               str(Path(ddp_train_worker.__file__)), "--fsdp-on-cpu", *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow  # two processes launched, then one in-process run: some 20 s on 2 cores
def test_two_cpu_processes_under_fsdp_end_with_the_weights_of_one_process(dataset_root, model_folder, tmp_path,
                                                                          monkeypatch):
    common = ["--model", str(model_folder), "--dataset", str(dataset_root), "--steps", "4", "--logging-steps", "1",
              "--save-steps", "4", "--learning-rate", "1e-2", "--warmup-steps", "0", "--full", *MAP_ARGS]
    result = _launch_fsdp("--seeded-by-frame", *common, "--output", str(tmp_path / "fsdp"), "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((tmp_path / "fsdp" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["trainer"] for r in records] == [{"processes": 2, "index": 0}, {"processes": 2, "index": 1}]
    model = AutoModel.from_pretrained(model_folder)
    siglip_layers = sum(type(m).__name__ == "SiglipEncoderLayer" for m in model.modules())
    decoder_layers = len(model.language_model.layers) + len(model.action_expert.layers)
    for r in records:  # sharded as the config and pi train say, each rank holding half of every weight: every Gemma
        # decoder layer one group of exactly its weights, every SigLIP layer a unit, besides accelerate's root and embedding
        assert r["sharding"]["distributed_type"] == "FSDP" and r["sharding"]["units"] > siglip_layers, r["sharding"]
        assert r["sharding"]["decoder_layers"] == [{"groups": 1, "whole_layer": True}] * decoder_layers, r["sharding"]
        assert abs(r["sharding"]["held"] - 0.5) < 0.01, r["sharding"]

    monkeypatch.setattr(train, "LeRobotDataset", ddp_train_worker.WholeChunks)
    monkeypatch.setattr(train, "PiCollator", ddp_train_worker.SameDraws)
    monkeypatch.setattr(ddp_train_worker.SameDraws, "batches", [])
    assert pi_cli.main(["train", *common, "--output", str(tmp_path / "one"), "--batch-size", "4"]) == 0
    # every run first passes frame 0 through the collator alone, before training (train.check_first_sample)
    one_process = ddp_train_worker.SameDraws.batches
    assert records[0]["batches"][0] == records[1]["batches"][0] == one_process[0] == [0]
    halves = [first + second for first, second in zip(records[0]["batches"][1:], records[1]["batches"][1:])]
    assert halves[:4] == one_process[1:5]  # the data loaders fetch one batch ahead

    sharded, single, initial = (load_file(folder / "model.safetensors")
                                for folder in (tmp_path / "fsdp", tmp_path / "one", model_folder))
    assert sharded.keys() == single.keys() == initial.keys()
    assert max((single[k] - initial[k]).abs().max().item() for k in single) > 100 * ATOL
    torch.testing.assert_close(sharded, single, rtol=0, atol=ATOL)
    assert type(AutoModel.from_pretrained(tmp_path / "fsdp")).__name__ == "PiForActionGeneration"


@pytest.mark.slow  # two processes launched: some 15 s on 2 cores
def test_bf16_under_fsdp_saves_float32_trained_weights_and_the_frozen_ones_as_they_were(dataset_root, model_folder,
                                                                                      tmp_path):
    # from a bfloat16 checkpoint, mixed precision trains float32 copies of the trainable weights (accelerate's and
    # pi train's units alike) and leaves the frozen ones, those no loss reaches, in bfloat16
    AutoModel.from_pretrained(model_folder, dtype=torch.bfloat16).save_pretrained(tmp_path / "model")
    lerobot._processor().save_pretrained(tmp_path / "model")
    result = _launch_fsdp("--model", str(tmp_path / "model"), "--dataset", str(dataset_root), "--output",
                          str(tmp_path / "run"), "--steps", "2", "--batch-size", "2", "--save-steps", "2",
                          "--learning-rate", "1e-2", "--warmup-steps", "0", "--full", "--bf16", *MAP_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    saved, initial = (load_file(folder / "model.safetensors") for folder in (tmp_path / "run", tmp_path / "model"))
    frozen = {name for name, p in train.set_full_finetuning(AutoModel.from_pretrained(model_folder)).named_parameters()
              if not p.requires_grad}
    assert frozen and saved.keys() == initial.keys()
    for name, weight in saved.items():
        if name in frozen:
            assert weight.dtype == torch.bfloat16 and torch.equal(weight, initial[name]), name
        else:
            assert weight.dtype == torch.float32, name
    assert max((saved[k] - initial[k].float()).abs().max().item() for k in saved.keys() - frozen) > 1e-3
    loaded = AutoModel.from_pretrained(tmp_path / "run").state_dict()  # as float32, the frozen weights upcast exactly
    assert all(torch.equal(loaded[name], weight.float()) for name, weight in saved.items())


@pytest.mark.slow  # two processes launched: some 20 s on 2 cores
def test_lora_under_fsdp_is_refused_before_training(dataset_root, model_folder, tmp_path):
    # pi train merges the adapters into the weights it saves: it cannot from shards, so it says so at the start
    result = _launch_fsdp("--model", str(model_folder), "--dataset", str(dataset_root), "--output", str(tmp_path / "o"),
                          "--steps", "2", "--batch-size", "2", "--lora", *MAP_ARGS)
    assert result.returncode != 0
    assert "--lora under FSDP" in result.stderr and "--full" in result.stderr, result.stderr[-3000:]
    assert not list((tmp_path / "o").glob("checkpoint-*"))


@pytest.mark.slow  # two processes launched three times: some 50 s on 2 cores
def test_a_run_under_fsdp_resumes_from_its_checkpoint(dataset_root, model_folder, tmp_path):
    common = ["--model", str(model_folder), "--dataset", str(dataset_root), "--output", str(tmp_path / "run"),
              "--batch-size", "2", "--logging-steps", "1", "--save-steps", "2", "--warmup-steps", "0", "--full", *MAP_ARGS]
    first = _launch_fsdp(*common, "--steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = _launch_fsdp(*common, "--steps", "4", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    state = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    assert type(AutoModel.from_pretrained(tmp_path / "run")).__name__ == "PiForActionGeneration"
    finished = (tmp_path / "run" / "model.safetensors").read_bytes()
    (tmp_path / "run" / "model.safetensors").unlink()  # as a kill while the final model was written leaves it
    again = _launch_fsdp(*common, "--steps", "4", "--resume")  # writes it again, without a step more
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == finished
    assert not (tmp_path / "run" / "checkpoint-5").exists()


@pytest.mark.slow  # two processes launched, then one in-process run: some 20 s on 2 cores
def test_pi0_fast_under_fsdp_ends_with_the_weights_of_one_process(dataset_root, tmp_path):
    # π0-FAST reads its logits with the embedding matrix after the whole stack: the embedding must stay gathered.
    # Its loss is the mean of per-example means and draws nothing at random, so halves of a batch need no help.
    from processing_pi import FastActionTokenizer

    torch.manual_seed(0)
    config = lerobot.tiny_config("pi0_fast", image_keys=list(lerobot.CAMERA_MAP.values()), action_horizon=lerobot.HORIZON,
                                 max_token_len=64)
    modeling_pi.PiForActionGeneration(config).save_pretrained(tmp_path / "model")
    fast = FastActionTokenizer.from_pretrained(lerobot.FIXTURES / "processor" / "fast_tokenizer")
    lerobot._processor("pi0_fast", fast=fast, max_token_len=64).save_pretrained(tmp_path / "model")
    common = ["--model", str(tmp_path / "model"), "--dataset", str(dataset_root), "--steps", "2", "--save-steps", "2",
              "--learning-rate", "1e-2", "--warmup-steps", "0", "--full", *MAP_ARGS]
    result = _launch_fsdp(*common, "--output", str(tmp_path / "fsdp"), "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert pi_cli.main(["train", *common, "--output", str(tmp_path / "one"), "--batch-size", "4"]) == 0
    sharded, single, initial = (load_file(folder / "model.safetensors")
                                for folder in (tmp_path / "fsdp", tmp_path / "one", tmp_path / "model"))
    embedding = "language_model.embed_tokens.weight"
    assert (single[embedding] - initial[embedding]).abs().max().item() > 100 * ATOL
    torch.testing.assert_close(sharded, single, rtol=0, atol=ATOL)
    assert AutoModel.from_pretrained(tmp_path / "fsdp").config.variant == "pi0_fast"


@pytest.mark.slow  # two processes launched: some 10 s on 2 cores
def test_knowledge_insulation_trains_under_fsdp(dataset_root, model_folder, tmp_path):
    # its FAST loss reads the embedding matrix as π0-FAST's does
    result = _launch_fsdp("--model", str(model_folder), "--dataset", str(dataset_root), "--output", str(tmp_path / "run"),
                          "--steps", "2", "--batch-size", "2", "--save-steps", "2", "--full", "--knowledge-insulation",
                          "--fast-tokenizer", str(lerobot.FIXTURES / "processor" / "fast_tokenizer"), *MAP_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert AutoModel.from_pretrained(tmp_path / "run").config.knowledge_insulation

"""Run under `accelerate launch`: `pi train`'s training, then each rank records world size, backend, a digest of
its weights (of its shard, under FSDP) and how the Trainer held them. Under DDP each rank sees different batches,
so equal digests mean the gradients were synchronised.

Two options, before `pi train`'s flags, serve `test_fsdp_training.py`:

- `--fsdp-on-cpu`: accelerate (1.16) runs an FSDP config as DDP when the processes run on CPUs (its
  `AcceleratorState` sets `DistributedType.FSDP` only for accelerator devices). This sets FSDP, with the config's
  plugin, as accelerate does on GPUs; from there on the Trainer and accelerate take their own FSDP path.
- `--seeded-by-frame`: trains on `WholeChunks` with `SameDraws`, so that two processes with half the batch each
  compute the single process's loss; each rank records the frames of its batches.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from transformers.models.gemma.modeling_gemma import GemmaDecoderLayer

import pi_cli
from training_pi import train
from training_pi.fsdp import decoder_layer_parts


class WholeChunks(train.LeRobotDataset):
    """The frames whose action chunk ends inside their episode, each sample naming its frame. A process's loss is
    the mean over its batch's non-padded steps: with none padded, each half of a batch weighs its steps as the whole
    batch does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        ends = self.episodes["dataset_to_index"].loc[self.frames["episode_index"]].to_numpy()
        self.kept = np.flatnonzero(np.arange(len(ends)) + self.action_horizon <= ends)

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, i: int) -> dict:
        frame = int(self.kept[i])
        return {**super().__getitem__(frame), "frame": frame}


class SameDraws(train.PiCollator):
    """Each sample's noise [H, A] and flow time from a generator seeded with its frame, not from the process's
    random state (seeded alike on every rank, so two processes would draw the same numbers for different halves);
    records the frames of each batch."""

    batches: list[list[int]] = []

    def __call__(self, samples: list[dict]) -> dict:
        batch = super().__call__(samples)
        draws = [torch.Generator().manual_seed(s["frame"]) for s in samples]
        batch["noise"] = torch.stack([torch.randn(batch["actions"].shape[1:], generator=g) for g in draws])
        batch["timestep"] = torch.cat([torch.rand(1, generator=g) for g in draws]) * 0.999 + 0.001
        SameDraws.batches.append([s["frame"] for s in samples])
        return batch


def layer_group(layer: GemmaDecoderLayer) -> dict:
    """Under FSDP: how many parameter groups the decoder layer's parts belong to, and whether theirs holds exactly
    the layer's weights."""
    parts = decoder_layer_parts(layer)
    if not all(isinstance(part, FSDPModule) for part in parts):
        return {"groups": 0, "whole_layer": False}
    groups = {id(part._get_fsdp_state()._fsdp_param_group): part._get_fsdp_state()._fsdp_param_group for part in parts}
    held = {id(fsdp_param.sharded_param) for group in groups.values() for fsdp_param in group.fsdp_params}
    return {"groups": len(groups), "whole_layer": held == {id(param) for param in layer.parameters()}}


def seeded_by_frame() -> None:
    train.LeRobotDataset, train.PiCollator = WholeChunks, SameDraws


def fsdp_on_cpu() -> None:
    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.fsdp_plugin = fsdp_plugin
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


if __name__ == "__main__":
    options = {"--fsdp-on-cpu": fsdp_on_cpu, "--seeded-by-frame": seeded_by_frame}
    for flag in options.keys() & set(sys.argv[1:]):
        options[flag]()
    parser = pi_cli.build_parser()
    args = parser.parse_args(["train", *(a for a in sys.argv[1:] if a not in options)])
    digest, trainer_view, sharding = hashlib.sha256(), {}, {}
    original = train.Trainer

    class RecordingTrainer(original):
        def train(self, *a, **k):
            result = super().train(*a, **k)
            # the weights as training left them: afterwards rank 0 alone merges the adapters into them to save
            params = dict(self.model.named_parameters())
            held = {name: p.to_local() if isinstance(p, DTensor) else p for name, p in params.items()}
            for name, param in sorted(held.items()):
                digest.update(name.encode() + param.detach().cpu().view(torch.uint8).numpy().tobytes())
            trainer_view.update(processes=self.args.world_size, index=self.args.process_index)
            sharding.update(distributed_type=self.accelerator.distributed_type.value,
                            units=sum(isinstance(m, FSDPModule) for m in self.model.modules()),
                            held=sum(p.numel() for p in held.values()) / sum(p.numel() for p in params.values()),
                            decoder_layers=[layer_group(layer) for layer in self.model.modules()
                                            if isinstance(layer, GemmaDecoderLayer)])
            return result

    train.Trainer = RecordingTrainer
    if code := train.run(args):
        raise SystemExit(code)
    if not dist.is_initialized():
        raise SystemExit("not launched as a distributed job")
    record = {"world_size": dist.get_world_size(), "backend": dist.get_backend_config(), "weights": digest.hexdigest(),
              "trainer": trainer_view, "sharding": sharding, "batches": SameDraws.batches}
    (Path(args.output) / f"rank{dist.get_rank()}.json").write_text(json.dumps(record))

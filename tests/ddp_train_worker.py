"""Run under `accelerate launch`: `pi train`'s training, then each rank records world size, backend and a digest
of its weights. Under DDP each rank sees different batches, so equal digests mean the gradients were synchronised."""

import hashlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

import pi_cli
from training_pi import train

if __name__ == "__main__":
    parser = pi_cli.build_parser()
    args = parser.parse_args(["train", *sys.argv[1:]])
    digest, trainer_view = hashlib.sha256(), {}
    original = train.Trainer

    class RecordingTrainer(original):
        def train(self, *a, **k):
            result = super().train(*a, **k)
            # the weights as training left them: afterwards rank 0 alone merges the adapters into them to save
            for name, param in sorted(self.model.named_parameters()):
                digest.update(name.encode() + param.detach().cpu().numpy().tobytes())
            trainer_view.update(processes=self.args.world_size, index=self.args.process_index)
            return result

    train.Trainer = RecordingTrainer
    train.train(args)
    if not dist.is_initialized():
        raise SystemExit("not launched as a distributed job")
    record = {"world_size": dist.get_world_size(), "backend": dist.get_backend_config(), "weights": digest.hexdigest(),
              "trainer": trainer_view}
    (Path(args.output) / f"rank{dist.get_rank()}.json").write_text(json.dumps(record))

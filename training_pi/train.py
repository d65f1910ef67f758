"""`pi train`: fine-tune a converted π model on a LeRobot v3 dataset with transformers.Trainer.

    pi train --model CONVERTED --dataset LEROBOT_DIR --output OUT [--lora | --full] [--freeze-vision]
             [--steps N] [--batch-size N] [--learning-rate LR] [--warmup-steps N] [--resume]
             [--camera-map DATASET_KEY=MODEL_KEY ...] [--bf16] [--gradient-checkpointing] [--recompute-stats]

The schedule is the reference's: AdamW (β2 0.95, weight decay 1e-10, gradient clip 1.0), linear
warm-up, cosine decay to a tenth of the peak. The norm statistics are, as LeRobot trains with them, the
dataset's `meta/stats.json` (`--recompute-stats`: exact ones over every frame instead); they are written
beside the output in openpi's and LeRobot's formats, the processor saved with the model uses them and
the model card says which were used. OUT receives the fine-tuned model (LoRA adapters merged in, so
`AutoModel.from_pretrained` loads it), the processor, a model card and the remote code (so `pi push`
publishes it as it is), `adapter/` (LoRA runs), `loss_curve.png` and Trainer checkpoints (`checkpoint-*`,
what `--resume` continues from). Runs unchanged under `accelerate launch` (DDP; on a machine without
GPUs, with ACCELERATE_USE_CPU=true, or the processes form no job and `check_one_job` stops the run).
"""

import argparse
import os
import sys
from pathlib import Path

from huggingface_hub import ModelCard
from transformers import AutoModel, AutoProcessor, Trainer, TrainingArguments

import modeling_pi  # noqa: F401  (registers "pi" with AutoModel / AutoProcessor)
from conversion.remote_code import add_remote_code
from model_cards import DEFAULT_LICENSE, render_model_card

from .lerobot_dataset import (DatasetError, LeRobotDataset, PiCollator, compute_norm_stats, dataset_norm_stats,
                              write_norm_stats)
from .lora import apply_lora, set_full_finetuning
from .loss_curve import save_loss_curve


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="converted model folder (model + processor)")
    parser.add_argument("--dataset", required=True, help="LeRobot v3 dataset folder")
    parser.add_argument("--output", required=True)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="full", action="store_false", help="LoRA presets gemma_2b_lora + gemma_300m_lora (default)")
    mode.add_argument("--full", dest="full", action="store_true", help="full fine-tuning")
    parser.set_defaults(full=False)
    parser.add_argument("--freeze-vision", action="store_true", help="keep the vision tower and projector frozen")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2.5e-5)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--save-steps", type=int, default=500)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    parser.add_argument("--camera-map", nargs="*", default=None, metavar="DATASET_KEY=MODEL_KEY")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (hardware permitting)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--recompute-stats", action="store_true",
                        help="normalise with exact statistics over every frame, not the dataset's meta/stats.json")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _camera_map(pairs: list[str] | None) -> dict[str, str] | None:
    if pairs is None:
        return None
    if any("=" not in pair for pair in pairs):
        raise DatasetError(f"--camera-map takes DATASET_KEY=MODEL_KEY pairs, got {pairs}.")
    return dict(pair.split("=", 1) for pair in pairs)


def train(args: argparse.Namespace) -> Path:
    output = Path(args.output)
    model = AutoModel.from_pretrained(args.model)
    processor = AutoProcessor.from_pretrained(args.model)
    dataset = LeRobotDataset(args.dataset, model.config.action_horizon, _camera_map(args.camera_map), processor.image_keys)
    processor.norm_stats, stats_source = _norm_stats(dataset, processor.norm_mode, args.recompute_stats)

    trainable = set_full_finetuning(model, args.freeze_vision) if args.full else apply_lora(model, freeze_vision=args.freeze_vision)
    training_args = TrainingArguments(
        output_dir=str(output), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
        optim="adamw_torch", adam_beta2=0.95, weight_decay=1e-10, max_grad_norm=1.0,
        logging_steps=args.logging_steps, save_steps=args.save_steps, save_total_limit=2,
        bf16=args.bf16, activation_checkpointing=args.gradient_checkpointing, remove_unused_columns=False,
        report_to=[], seed=args.seed, dataloader_num_workers=0,
    )
    check_one_job(training_args)
    trainer = Trainer(model=trainable, args=training_args, train_dataset=dataset, data_collator=PiCollator(processor))
    trainer.train(resume_from_checkpoint=True if args.resume else None)

    if trainer.is_world_process_zero():
        write_norm_stats(processor.norm_stats, output / "norm_stats")
        if not args.full:
            trainable.save_pretrained(output / "adapter")
            trainable = trainable.merge_and_unload()
        trainable.save_pretrained(output)
        processor.save_pretrained(output)
        _model_card(args, trainable, processor, stats_source).save(output / "README.md")
        add_remote_code(output)
        logged = [(log["step"], log["loss"]) for log in trainer.state.log_history if "loss" in log]
        if logged:
            save_loss_curve(*map(list, zip(*logged)), output / "loss_curve.png")
    return output


def _norm_stats(dataset: LeRobotDataset, mode: str, recompute: bool):
    """The statistics the run normalises with, and where they come from (for the model card)."""
    if recompute:
        return compute_norm_stats(dataset), f"recomputed over all {len(dataset)} frames (exact quantiles)"
    return dataset_norm_stats(dataset, mode), "the dataset's `meta/stats.json`, as LeRobot trains with them"


def check_one_job(training_args: TrainingArguments) -> None:
    """Raises when the launcher started several processes but the Trainer runs each as a job of its own: each
    would train alone on the same batches and all of them would write the output folder."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size != launched:
        raise RuntimeError(
            f"{launched} processes were launched, but the Trainer sees {training_args.world_size}: they would train "
            "apart and all write the output. On a machine without GPUs, set ACCELERATE_USE_CPU=true for accelerate "
            "to run them as one job."
        )


def _model_card(args: argparse.Namespace, model, processor, stats_source: str) -> ModelCard:
    """The fine-tuned folder's card: the base model's license and lineage, this run's provenance."""
    base_card = Path(args.model) / "README.md"
    base = ModelCard.load(base_card).data if base_card.is_file() else None
    method = "full fine-tuning" if args.full else "LoRA, merged into the weights"
    provenance = (f"Fine-tuned with `pi train` from `{Path(args.model).name}` on the LeRobot dataset "
                  f"`{Path(args.dataset).name}`: {args.steps} steps, {method}. Normalisation statistics: {stats_source}.")
    return render_model_card(
        model.config, model.num_parameters(), Path(args.output).name, provenance,
        license=(base.license if base else None) or DEFAULT_LICENSE,
        base_model=None if Path(args.model).is_dir() else args.model,
        norm_stats=processor.norm_stats.to_dict(), processor=processor,
    )


def run(args: argparse.Namespace) -> int:
    try:
        print(f"wrote {train(args)}")
    except DatasetError as err:
        print(f"pi train: error: {err}", file=sys.stderr)
        return 1
    return 0

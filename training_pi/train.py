"""`pi train`: fine-tune a converted π model on a LeRobot v3 dataset with transformers.Trainer.

    pi train --model CONVERTED --dataset LEROBOT_DIR --output OUT [--lora | --full] [--freeze-vision]
             [--steps N] [--batch-size N] [--learning-rate LR] [--warmup-steps N] [--resume | --overwrite]
             [--camera-map DATASET_KEY=MODEL_KEY ...] [--bf16] [--gradient-checkpointing] [--recompute-stats] [--seed N]
             [--rtc-max-delay N [--rtc-prefix-key FEATURE]] [--[no-]knowledge-insulation [--fast-tokenizer DIR]]

The schedule is the reference's: AdamW (β2 0.95, weight decay 1e-10, gradient clip 1.0), linear
warm-up, cosine decay to a tenth of the peak. The norm statistics are, as LeRobot trains with them, the
dataset's `meta/stats.json` (`--recompute-stats`: exact ones over every frame instead); they are written
beside the output in openpi's and LeRobot's formats, the processor saved with the model uses them and
the model card says which were used. OUT receives the fine-tuned model (LoRA adapters merged in, so
`AutoModel.from_pretrained` loads it), the processor, a model card and the remote code (so `pi push`
publishes it as it is), `adapter/` (LoRA runs), `loss_curve.png` and Trainer checkpoints (`checkpoint-*`,
what `--resume` continues from). Runs unchanged under `accelerate launch` (DDP; on a machine without
GPUs, with ACCELERATE_USE_CPU=true, or the processes form no job and `check_one_job` stops the run), and
with `--full` under FSDP (`training_pi/accelerate/fsdp.yaml`; each Gemma decoder layer one unit, formed here by
`training_pi.fsdp`): every process then gathers the sharded weights for the main process to save.

Faults: options no run can have, a model, tokenizer or dataset that does not load and a task too long for the
prompt stop the run before anything is written, naming the flag or the file. A non-empty OUT is refused unless
`--resume` continues it or `--overwrite` deletes it (never one that holds the model or the dataset). `--resume`
continues from the newest complete checkpoint: the Trainer writes `trainer_state.json` last, so a folder without a
readable one is what a kill during a save left; it is removed, and with no complete checkpoint the run starts from
step 0, saying so; a checkpoint of the last step is the finished run, whose model is written again. It refuses a
checkpoint with a file it cannot open, and inputs other than the run's (`.pi_train_run.json` records them). `--seed`
seeds everything random before the model and its adapters are built, so two CPU runs with the same
seed end with bit-identical weights.

`--rtc-max-delay N` (π0, π0.5) trains for real-time chunking: each example's chunk begins with a clean prefix of
0 to N actions (drawn uniformly), given at flow time 0 and left out of the loss; the saved config carries it
(`rtc_max_delay`), so that sampling with the previous chunk's actions fixes them instead of guiding towards them.
At run time the prefix is what the robot executes during the delay: the previous chunk's plan, not what the
demonstrator would have done. Where the dataset records what the robot actually executed beside the commanded
`action` (a feature of the same dims), `--rtc-prefix-key FEATURE` trains the prefix on it and the rest on the
recorded actions that followed, so that the model continues from where the executed actions led.

`--knowledge-insulation` (π0.5) trains as Physical Intelligence trains π0.5: the backbone also learns each chunk's
FAST tokens after the prompt, with the FAST tokenizer of `--fast-tokenizer DIR` (or the processor's own), and the
action expert reads the backbone through a stop-gradient; the loss is the sum of both. Sampling is unchanged.

Without the flag, a model trained with either mode (its config says so) goes on training with it, and the run says
so; `--rtc-max-delay 0` and `--no-knowledge-insulation` leave it out.
"""

import argparse
import json
import math
import os
import pickle
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import EntryNotFoundError
from peft import set_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor, Trainer, TrainerState, TrainingArguments, get_scheduler, set_seed
from transformers.utils import is_torch_xla_available

import modeling_pi  # noqa: F401  (registers "pi" with AutoModel / AutoProcessor)
from conversion.json_files import index_shards, read_json
from conversion.remote_code import add_remote_code
from model_cards import DEFAULT_LICENSE, render_model_card
from modeling_pi.input_checks import check_source
from modeling_pi.quantization import refuse_quantized_training

from processing_pi import FastActionTokenizer
from processing_pi.prompts import PromptTooLong, discretize_state

from .fsdp import shard_units
from .lerobot_dataset import (STATE, DatasetError, LeRobotDataset, PiCollator, compute_norm_stats, dataset_norm_stats,
                              write_norm_stats)
from .lora import apply_lora, set_full_finetuning
from .loss_curve import save_loss_curve

# the reference's learning-rate schedule: linear warm-up, cosine decay to a tenth of the peak
SCHEDULE, SCHEDULE_OPTIONS = "cosine_with_min_lr", {"min_lr_rate": 0.1}


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
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue from the last complete checkpoint in --output (from step 0 when there is none)")
    existing.add_argument("--overwrite", action="store_true",
                          help="delete a non-empty --output first: its checkpoints, model, adapter, statistics and any "
                               "other file in it (without this flag or --resume, a non-empty --output is refused)")
    parser.add_argument("--camera-map", nargs="*", default=None, metavar="DATASET_KEY=MODEL_KEY")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (hardware permitting)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--recompute-stats", action="store_true",
                        help="normalise with exact statistics over every frame, not the dataset's meta/stats.json")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds adapter initialisation, data order, flow noise and times: the same seed gives the same "
                             "run (bit for bit on CPU)")
    parser.add_argument("--rtc-max-delay", type=int, default=None, metavar="N",
                        help="real-time chunking: train with clean action prefixes of 0 to N steps (π0, π0.5; default: "
                             "as the model was trained, 0: none)")
    parser.add_argument("--rtc-prefix-key", metavar="FEATURE",
                        help="with --rtc-max-delay: the dataset feature the clean prefixes hold (default: action), e.g. "
                             "the actions the robot executed")
    parser.add_argument("--knowledge-insulation", action=argparse.BooleanOptionalAction, default=None,
                        help="π0.5: the backbone also learns the chunk's FAST tokens, the expert reads it through a "
                             "stop-gradient (default: as the model was trained)")
    parser.add_argument("--fast-tokenizer", metavar="DIR", help="the FAST action tokenizer for --knowledge-insulation "
                        "(a FastActionTokenizer folder; default: the processor's own)")
    return parser


def _camera_map(pairs: list[str] | None) -> dict[str, str] | None:
    if pairs is None:
        return None
    if not pairs or any("=" not in pair for pair in pairs):
        raise DatasetError(f"--camera-map takes DATASET_KEY=MODEL_KEY pairs, got {pairs or 'none'}.")
    keys, cameras = zip(*(pair.split("=", 1) for pair in pairs))
    for side, names in (("dataset key", keys), ("model camera", cameras)):
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise DatasetError(f"--camera-map names the {side} {', '.join(twice)} twice; each camera takes one image.")
    return dict(zip(keys, cameras))


def check_numbers(args: argparse.Namespace) -> None:
    """Counts and rates a run can have, checked before anything is loaded or written."""
    least = {"--steps": (args.steps, 1), "--batch-size": (args.batch_size, 1), "--save-steps": (args.save_steps, 1),
             "--logging-steps": (args.logging_steps, 1), "--warmup-steps": (args.warmup_steps, 0),
             "--rtc-max-delay": (args.rtc_max_delay or 0, 0)}
    for flag, (value, smallest) in least.items():
        if value < smallest:
            raise OptionError(f"{flag} must be at least {smallest}, got {value}.")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise OptionError(f"--learning-rate must be a positive number, got {args.learning_rate}.")


class OutputError(ValueError):
    """An --output folder `pi train` must not write into as asked; the message names the folder and the way out."""


class OptionError(ValueError):
    """A `pi train` option the model cannot take."""


def _insulate(model, processor, fast_tokenizer: str | None):
    """Knowledge insulation: the model's flag, and a processor that writes the chunks' FAST tokens (checked as the
    processor checks its settings)."""
    if model.config.variant != "pi05":
        raise OptionError(f"--knowledge-insulation is a π0.5 training mode, not {model.config.variant}'s.")
    tokenizer = processor.action_tokenizer if fast_tokenizer is None else _load("--fast-tokenizer", fast_tokenizer,
                                                                                 FastActionTokenizer.from_pretrained)
    if tokenizer is None:
        raise OptionError("--knowledge-insulation trains the backbone on FAST tokens: pass --fast-tokenizer DIR.")
    try:
        processor = processor.replace(action_tokenizer=tokenizer, knowledge_insulation=True)
    except ValueError as err:
        raise OptionError(f"--knowledge-insulation: {err}") from err
    model.config.knowledge_insulation = True
    return processor


def _training_modes(model, processor, args: argparse.Namespace) -> tuple:
    """Real-time chunking's clean prefixes and knowledge insulation as the flags set them, or, where a flag is
    not given, as the model was trained (its config), which is then said. Returns the processor for them and
    what was taken from the model."""
    inherited = []
    if args.rtc_max_delay is not None:
        model.config.rtc_max_delay = args.rtc_max_delay
        try:
            model.config.validate_rtc()
        except ValueError as err:
            raise OptionError(f"--rtc-max-delay: {err}") from None
    elif model.config.rtc_max_delay:
        inherited.append(f"clean action prefixes of 0 to {model.config.rtc_max_delay} steps (--rtc-max-delay 0: none)")
    insulation = args.knowledge_insulation
    if insulation is None and model.config.knowledge_insulation:
        insulation = True
        inherited.append("knowledge insulation (--no-knowledge-insulation: without)")
    if args.fast_tokenizer and not insulation:
        raise OptionError("--fast-tokenizer gives --knowledge-insulation its FAST tokenizer: pass both, or neither.")
    if insulation:
        processor = _insulate(model, processor, args.fast_tokenizer)
    elif model.config.knowledge_insulation:  # --no-knowledge-insulation
        model.config.knowledge_insulation = False
        processor = processor.replace(knowledge_insulation=False)
    return processor, inherited


def _load(flag: str, path: str, load):
    """`load(path)`, its failure an `OptionError` that names the flag."""
    try:
        check_source(path, flag)
    except ValueError as err:
        raise OptionError(str(err)) from None
    try:
        return load(path)
    except (OSError, ValueError) as err:
        where = "" if Path(path).exists() else " (no such folder here; as a Hub id it does not load either)"
        raise OptionError(f"{flag} {path}{where}: {err}") from err


def train(args: argparse.Namespace) -> Path:
    check_numbers(args)
    output = Path(args.output)
    check_output(output, args)
    set_seed(args.seed)  # before the model loads and the LoRA adapters are drawn: the Trainer seeds only later
    model = _load("--model", args.model, AutoModel.from_pretrained)
    try:
        refuse_quantized_training(model)
    except ValueError as err:
        raise OptionError(f"--model {args.model}: {err}") from None
    processor = _load("--model", args.model, AutoProcessor.from_pretrained)
    processor, inherited = _training_modes(model, processor, args)
    if args.rtc_prefix_key and not model.config.rtc_max_delay:
        raise OptionError("--rtc-prefix-key fills the clean action prefixes of --rtc-max-delay N (N >= 1); pass both.")
    dataset = LeRobotDataset(args.dataset, model.config.action_horizon, _camera_map(args.camera_map), processor.image_keys,
                             args.rtc_prefix_key)
    norm_stats, stats_source = _norm_stats(dataset, processor.norm_mode, args.recompute_stats)
    try:  # checked as the saved processor will be when it loads
        processor = processor.replace(norm_stats=norm_stats)
    except ValueError as err:
        raise DatasetError(f"{args.dataset}: its statistics do not fit the model's processor: {err}") from err
    check_prompts(dataset, processor)
    check_first_sample(dataset, processor)

    trainable = set_full_finetuning(model, args.freeze_vision) if args.full else apply_lora(model, freeze_vision=args.freeze_vision)
    training_args = TrainingArguments(
        output_dir=str(output), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
        lr_scheduler_type=SCHEDULE, lr_scheduler_kwargs=SCHEDULE_OPTIONS,
        optim="adamw_torch", adam_beta2=0.95, weight_decay=1e-10, max_grad_norm=1.0,
        logging_steps=args.logging_steps, save_steps=args.save_steps, save_total_limit=2,
        bf16=args.bf16, use_cpu=args.bf16 and on_cpu_only(),  # transformers refuses bf16 on a CPU it is not told of
        activation_checkpointing=args.gradient_checkpointing, remove_unused_columns=False,
        report_to=[], seed=args.seed, dataloader_num_workers=0,
    )
    check_one_job(training_args)
    if inherited and training_args.should_save:
        print(f"pi train: as {args.model} was trained, this run trains with {'; and with '.join(inherited)}.")
    blank = [key for key in processor.image_keys if key not in dataset.camera_map.values()]
    if blank and training_args.should_save:
        print(f"pi train: no camera of {args.dataset} maps to the model's {', '.join(blank)}: "
              f"{'they train' if len(blank) > 1 else 'it trains'} as an absent camera (masked) throughout.")
    checkpoint = resume_checkpoint(output, training_args.should_save) if args.resume else None
    finished = checkpoint is not None and check_resumable(Path(checkpoint), args)
    record = run_record(args, model, dataset, processor)
    notes = [checkpoint and check_same_run(output, record), checkpoint and resumed_schedule(Path(checkpoint), args)]
    for note in notes:
        if note and training_args.should_save:
            print(note)
    trainer = Trainer(model=trainable, args=training_args, train_dataset=dataset, data_collator=PiCollator(processor))
    if trainer.is_fsdp_enabled and not args.full:
        raise OptionError("--lora under FSDP: the adapters are merged into the saved weights, which FSDP leaves in shards "
                          "across the processes; pass --full, or train LoRA with DDP (accelerate launch --multi_gpu).")
    if args.overwrite and output.exists() and training_args.should_save:  # only once the run is known to go ahead
        print(f"--overwrite: deleting {output} and everything in it")
        shutil.rmtree(output)
    if training_args.should_save:
        output.mkdir(parents=True, exist_ok=True)
        (output / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if finished:  # the Trainer, resumed at its last step, would take one step more
        restore_finished_run(trainer, trainable, Path(checkpoint))
    else:
        if trainer.is_fsdp_enabled:
            shard_units(trainable, trainer.accelerator)  # the units accelerate cannot form (training_pi/fsdp.py)
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
        except ValueError as err:  # torch's optimizer, loading a state of other parameter groups
            if checkpoint is None or "parameter group" not in str(err):
                raise
            raise OptionError(f"--resume: the optimizer state in {checkpoint} covers other weights than this run trains: "
                              "resume with the options the run started with (--lora or --full, --freeze-vision, "
                              "--knowledge-insulation). A checkpoint of a `pi train` that still trained the weights no "
                              "loss reaches (before they were left frozen) cannot be resumed: start afresh with "
                              "--overwrite.") from err
    # under FSDP each process holds a shard of every weight: all of them gather the full weights, for rank 0 to save
    weights = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled and not finished else None

    if trainer.is_world_process_zero():
        write_norm_stats(processor.norm_stats, output / "norm_stats")
        if not args.full:
            if Path(args.model).is_dir():  # the adapter names its base as typed: a relative path read from elsewhere fails
                trainable.peft_config[trainable.active_adapter].base_model_name_or_path = str(Path(args.model).resolve())
            trainable.save_pretrained(output / "adapter")
            trainable = trainable.merge_and_unload()
        trainable.save_pretrained(output, state_dict=weights)
        processor.save_pretrained(output)
        _model_card(args, trainable, processor, stats_source).save(output / "README.md")
        add_remote_code(output)
        logged = [(log["step"], log["loss"]) for log in trainer.state.log_history if "loss" in log]
        if logged:
            save_loss_curve(*map(list, zip(*logged)), output / "loss_curve.png")
    return output


def on_cpu_only() -> bool:
    """No GPU or other accelerator (XLA included): the Trainer runs on the CPU."""
    accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return not (accelerator or is_torch_xla_available())


def check_prompts(dataset: LeRobotDataset, processor) -> None:
    """Each task of the dataset fits the model's prompt budget with its training targets: a task too long would
    otherwise stop the run at the first batch holding it, which may be hours in. Where the prompt holds the state
    (its bins as numbers), each task is tried with the states that write it longest: the frame whose bins have the
    most digits, and the one with the most dims below the statistics' range (written "-1")."""
    table = dataset.frames.data.table
    task_of_frame = table.column("task_index").to_numpy()
    states = np.stack(table.column(STATE).to_numpy(zero_copy_only=False)).astype(np.float64)
    bins = discretize_state(processor.normalize_state(states))
    characters = 1 + (np.abs(bins) >= 10) + (bins >= 100) + (bins < 0)  # "7", "42", "255"; "-1" below the range
    lengths = {"digits": characters.sum(1), "below": (bins < 0).sum(1)}
    for task in np.unique(task_of_frame).tolist():
        frames = np.flatnonzero(task_of_frame == task)
        for row in {int(frames[np.argmax(length[frames])]) for length in lengths.values()}:
            try:
                processor.check_prompt(dataset.tasks[task], states[row], with_targets=True)
            except PromptTooLong as err:
                raise DatasetError(f"{dataset.root}: task {task} ({dataset.tasks[task]!r:.80}): {err}") from err


def check_first_sample(dataset: LeRobotDataset, processor) -> None:
    """The dataset's first sample goes through the collator as every batch will: what the processor refuses in it
    (more action or state dims than the model has, say) stops the run now, not at its first step. The dims of every
    frame are those of the first (checked when the dataset opened)."""
    try:
        PiCollator(processor)([dataset[0]])
    except DatasetError:
        raise
    except ValueError as err:
        raise DatasetError(f"{dataset.root}: its samples do not fit the model: {err}") from err


def _norm_stats(dataset: LeRobotDataset, mode: str, recompute: bool):
    """The statistics the run normalises with, and where they come from (for the model card)."""
    if recompute:
        return compute_norm_stats(dataset), f"recomputed over all {len(dataset)} frames (exact quantiles)"
    return dataset_norm_stats(dataset, mode), "the dataset's `meta/stats.json`, as LeRobot trains with them"


def check_output(output: Path, args: argparse.Namespace) -> None:
    """Raises when the run would write over what it must not: a folder holding the model or the dataset, a file,
    or (without --resume or --overwrite) a non-empty folder, e.g. an earlier run whose checkpoints would be lost."""
    for flag, folder in (("--model", args.model), ("--dataset", args.dataset), ("--fast-tokenizer", args.fast_tokenizer)):
        if folder and Path(folder).exists() and output.resolve() in (Path(folder).resolve(), *Path(folder).resolve().parents):
            raise OutputError(f"{output}: holds the {flag} folder {folder}; write the fine-tuned model elsewhere.")
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: is a file, not a folder.")
    if output.is_dir() and any(path.name != RUN_RECORD for path in output.iterdir()) and not (args.resume or args.overwrite):
        raise OutputError(f"{output}: not empty (an earlier run?); pass --resume to continue its training, --overwrite to "
                          "delete it and start afresh, or choose another --output.")


RUN_RECORD = ".pi_train_run.json"  # what the run in a folder trains on, for --resume to compare (pi push skips it)


def run_record(args: argparse.Namespace, model, dataset: LeRobotDataset, processor) -> dict:
    """The inputs a run trains on, as JSON holds them: resuming it on other ones would change them mid-run."""
    record = {"model": str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model,
              "dataset": str(dataset.root.resolve()), "camera_map": dataset.camera_map,
              "norm_stats": processor.norm_stats.to_dict(), "rtc_max_delay": model.config.rtc_max_delay or 0,
              "rtc_prefix_key": args.rtc_prefix_key, "knowledge_insulation": bool(model.config.knowledge_insulation)}
    return json.loads(json.dumps(record))


def _resume_with(key: str, value) -> str:
    """How to pass `value` of a run record's `key` again."""
    if key == "camera_map":
        return "--camera-map " + " ".join(f"{dataset_key}={model_key}" for dataset_key, model_key in value.items())
    if key == "norm_stats":
        return ("the dataset and statistics it started with (another --dataset, or --recompute-stats added or left "
                "out, gives other statistics)")
    if key == "rtc_prefix_key":
        return f"--rtc-prefix-key {value}" if value else "no --rtc-prefix-key"
    if key == "knowledge_insulation":
        return "--knowledge-insulation" if value else "--no-knowledge-insulation"
    return f"--{key.replace('_', '-')} {value}"


def check_same_run(output: Path, record: dict) -> str | None:
    """Raises where `--resume` would go on training the run in `output` on other inputs than it started with: another
    model, statistics, camera map or training mode. Returns a note where only the dataset's folder differs (a copy,
    or a move: its statistics are the same). A run from before such records were written is not compared."""
    path = output / RUN_RECORD
    if not path.is_file():
        return None
    run = read_json(path, OptionError)
    changed = [key for key in record if key in run and key != "dataset" and run[key] != record[key]]
    if changed:
        raise OptionError(f"--resume: the run in {output} started with other inputs than these; resume it with "
                          f"{'; '.join(_resume_with(key, run[key]) for key in changed)}, or start afresh with "
                          "--overwrite.")
    if run.get("dataset", record["dataset"]) != record["dataset"]:
        return (f"--resume: the run started on {run['dataset']}; it goes on with {record['dataset']}, whose statistics "
                "are the same.")
    return None


CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # in the checkpoints of a LoRA run


def last_complete_checkpoint(output: Path) -> tuple[Path | None, list[Path]]:
    """The newest complete `checkpoint-N` in `output` (None if none is), and the incomplete ones. The Trainer's
    `_save_checkpoint` writes weights, optimizer, scheduler and RNG states, then `trainer_state.json` last: a
    folder whose trainer state is missing, unreadable or of another step is what a kill during a save left."""
    found = sorted((int(match[1]), path) for path in (output.iterdir() if output.is_dir() else ())
                   if path.is_dir() and (match := CHECKPOINT.match(path.name)))
    complete = [path for step, path in found if _trainer_step(path) == step]
    return (complete[-1] if complete else None), [path for _, path in found if path not in complete]


def _trainer_step(checkpoint: Path) -> int | None:
    try:
        return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resume_checkpoint(output: Path, main_process: bool) -> str | None:
    """The checkpoint `--resume` continues from. Every process picks the same one; the main process says which
    and removes the incomplete ones (a later save of the same step would otherwise land among their files)."""
    checkpoint, incomplete = last_complete_checkpoint(output)
    if main_process:
        for path in incomplete:
            print(f"--resume: {path} is incomplete (no readable trainer_state.json: its save was interrupted); removing it")
            shutil.rmtree(path, ignore_errors=True)
        print(f"--resume: resuming from {checkpoint}" if checkpoint else
              f"--resume: no complete checkpoint in {output}; training from step 0")
    return str(checkpoint) if checkpoint else None


def check_resumable(checkpoint: Path, args: argparse.Namespace) -> bool:
    """Whether the run `checkpoint` belongs to has finished (its step is --steps); raises where resuming from it
    cannot work: a step past --steps, or weights of the other kind (LoRA adapters against full fine-tuning)."""
    check_checkpoint_files(checkpoint)
    step = _trainer_step(checkpoint)
    if step > args.steps:
        raise OptionError(f"--resume: {checkpoint} is at step {step}, past --steps {args.steps}: pass --steps {step} or "
                          "more, or start afresh with --overwrite.")
    lora = (checkpoint / ADAPTER_WEIGHTS).is_file()
    if lora == args.full:
        kind, flag = ("LoRA adapters", "--lora") if lora else ("fully fine-tuned weights", "--full")
        raise OptionError(f"--resume: {checkpoint} holds {kind}: resume with {flag}, as the run started.")
    return step == args.steps


def _damaged(path: Path, checkpoint: Path, err: Exception) -> OptionError:
    return OptionError(f"--resume: {path} is damaged ({err}): delete {checkpoint} to resume from the checkpoint before "
                       "it, or start afresh with --overwrite.")


def check_checkpoint_files(checkpoint: Path) -> None:
    """Raises naming a weights or state file of `checkpoint` that cannot be opened: a safetensors file whose header
    does not read, or a `torch.save` file without its zip directory (what a truncated or overwritten file lacks).
    The Trainer, loading them, fails with a traceback that names no file."""
    for path in sorted(checkpoint.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(path, "pt"):
                    pass
            elif path.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(path):
                    pass
        except (SafetensorError, zipfile.BadZipFile, OSError) as err:
            raise _damaged(path, checkpoint, err) from err


def _schedule(args: argparse.Namespace, steps: int):
    """The learning rate of each step (counted from 1) of a run of `steps` steps with the run's options."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(SCHEDULE, optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=steps,
                              scheduler_specific_kwargs=SCHEDULE_OPTIONS)
    return lambda step: args.learning_rate * scheduler.lr_lambdas[0](step - 1)


def resumed_schedule(checkpoint: Path, args: argparse.Namespace) -> str | None:
    """Raises where the Trainer, resuming, would not follow the options given: it keeps the checkpoint's peak
    learning rate whatever --learning-rate says, and a --warmup-steps of its own would reshape the schedule
    under the steps already taken. Returns what a --steps other than the run's does to the learning rate, to be
    said: the Trainer spreads the schedule over the new --steps from the second resumed step on."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    step, planned = state["global_step"], state.get("max_steps")
    if (checkpoint / "scheduler.pt").is_file():
        try:
            peak = torch.load(checkpoint / "scheduler.pt", weights_only=True)["base_lrs"][0]
        except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError) as err:
            raise _damaged(checkpoint / "scheduler.pt", checkpoint, err) from err
        if not math.isclose(peak, args.learning_rate, rel_tol=1e-6):
            raise OptionError(f"--resume: {checkpoint} trains with --learning-rate {peak:g}, which its optimizer and "
                              f"schedule keep: resume with --learning-rate {peak:g}.")
    logged = [(log["step"], log["learning_rate"]) for log in state["log_history"] if "learning_rate" in log]
    if not planned or not logged:
        return None
    last, rate = logged[-1]
    if not math.isclose(_schedule(args, planned)(last), rate, rel_tol=1e-6, abs_tol=1e-12):
        raise OptionError(f"--resume: the learning rate {checkpoint} logged at step {last} ({rate:g}) is not the one "
                          f"--warmup-steps {args.warmup_steps} gives there: resume with the --warmup-steps the run "
                          "started with.")
    changed = step + 2  # the first resumed step takes the rate the checkpoint's optimizer holds
    if planned == args.steps or changed > args.steps:
        return None
    return (f"--resume: {checkpoint} is of a run of {planned} steps; with --steps {args.steps} its learning rate "
            f"follows a schedule of {args.steps} steps from step {changed} on ({_schedule(args, args.steps)(changed):g} "
            f"there, {_schedule(args, planned)(changed):g} in the run's own).")


def restore_finished_run(trainer: Trainer, model, checkpoint: Path) -> None:
    """A finished run's weights and log from its last checkpoint, without training: its tensors as they were saved
    (a run under mixed precision saved float32 copies of weights that loaded as bfloat16)."""
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    if (checkpoint / ADAPTER_WEIGHTS).is_file():
        set_peft_model_state_dict(model, load_file(checkpoint / ADAPTER_WEIGHTS))
        return
    index = checkpoint / "model.safetensors.index.json"
    files = ["model.safetensors"]
    if index.is_file():
        files = index_shards(index, OptionError)
    if not all((checkpoint / name).is_file() for name in files):
        raise OptionError(f"--resume: {checkpoint} holds no model weights pi train can read (a sharded FSDP state?): "
                          "the run finished; its model cannot be written again from here.")
    model.load_state_dict({key: value for name in files for key, value in load_file(checkpoint / name).items()},
                          assign=True)


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
    base = _base_card_data(args.model)
    method = "full fine-tuning" if args.full else "LoRA, merged into the weights"
    provenance = (f"Fine-tuned with `pi train` from `{Path(args.model).name}` on the LeRobot dataset "
                  f"`{Path(args.dataset).name}`: {args.steps} steps, {method}. Normalisation statistics: {stats_source}.")
    return render_model_card(
        model.config, model.num_parameters(), Path(args.output).name, provenance,
        license=(base.license if base else None) or DEFAULT_LICENSE,
        base_model=None if Path(args.model).is_dir() else args.model,
        norm_stats=processor.norm_stats.to_dict(), processor=processor,
    )


def _base_card_data(model: str):
    """The base model's card metadata: its folder's README, or its Hub repo's (from the cache when offline, as the
    model itself was read); None where it has none."""
    if Path(model).is_dir():
        card = Path(model) / "README.md"
        return ModelCard.load(card).data if card.is_file() else None
    try:
        return ModelCard.load(model).data
    except (OSError, ValueError, EntryNotFoundError) as err:  # no README in the repo, or none cached offline
        print(f"pi train: the card of {model} could not be read ({type(err).__name__}), so the fine-tuned card names "
              "no license of its own: add the base model's license to its README before publishing.")
        return None


def run(args: argparse.Namespace) -> int:
    try:
        print(f"wrote {train(args)}")
    except (DatasetError, OutputError, OptionError) as err:
        print(f"pi train: error: {err}", file=sys.stderr)
        return 1
    return 0

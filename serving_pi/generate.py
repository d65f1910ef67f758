"""`pi generate`: one action chunk from images, a prompt and a state, through the "robotics" pipeline.

    pi generate --model FOLDER --image NAME=FILE [--image NAME=FILE ...] --prompt TEXT --state V1,V2,...
                [--num-steps N] [--seed S] [--device DEVICE] [--output actions.npy]

It prints the chunk as JSON ({"actions": [[...], ...], "valid": true}), or with `--output` saves it with `np.save`.
A chunk that is not a prediction (`valid` false) is printed with `"valid": false` and never saved, and the
command exits 1. A folder without normalisation statistics gets a warning: its state goes in, and its actions
come out, as the model's normalised values.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors import SafetensorError
from transformers import pipeline

import modeling_pi  # noqa: F401  (registers "pi" and the "robotics" task)
from modeling_pi.input_checks import check_device, check_source
from pipelines_pi import TASK


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="converted model folder (model + processor)")
    parser.add_argument("--image", action="append", required=True, metavar="NAME=FILE",
                        help="a camera's image, e.g. base_0_rgb=front.png (once per camera)")
    parser.add_argument("--prompt", required=True, help="the task, e.g. 'fold the towel'")
    parser.add_argument("--state", required=True, metavar="V1,V2,...",
                        help="the robot state in its own units, comma-separated, e.g. -0.5,0.2,0.3")
    parser.add_argument("--num-steps", type=int, help="flow solver steps (π0 / π0.5; default: the model's)")
    parser.add_argument("--seed", type=int, help="seed of the flow noise (π0 / π0.5; default: a fresh draw)")
    parser.add_argument("--device", help="where the model runs, e.g. cpu or cuda:1 (default: the first GPU if any)")
    parser.add_argument("--output", help="save the chunk [H, robot action dim] to this .npy file instead of printing JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        observation = {"images": _read_images(args.image), "prompt": args.prompt, "state": _parse_state(args.state)}
        if args.num_steps is not None and args.num_steps < 1:
            raise ValueError(f"--num-steps must be at least 1, got {args.num_steps}.")
        folder = Path(args.output).resolve().parent if args.output else None
        if folder is not None and not folder.is_dir():
            raise ValueError(f"--output {args.output}: no folder {folder} to write it in.")
        policy = _policy(args.model, args.device)
        if policy.processor.norm_stats is None:
            print(f"pi generate: warning: {args.model} has no normalisation statistics: the state goes to the model as "
                  "it is, and the actions are the model's normalised output.", file=sys.stderr)
        if policy.device.type == "cpu":
            policy.model.optimize_for_cpu()  # the CPU kernel per product (modeling_pi/cpu_linears.py)
        if policy.processor.robot is not None:
            raise ValueError(f"{args.model} reads the raw observations of its robot ({policy.processor.robot.name}), "
                             "which pi generate does not build: use pipeline('robotics', ...) or pi serve.")
        if args.num_steps is not None and not policy.model.config.is_flow:
            raise ValueError("--num-steps sets the flow solver's steps; π0-FAST decodes tokens.")
        options = {name: value for name, value in (("num_steps", args.num_steps), ("seed", args.seed)) if value is not None}
        out = policy(observation, **options)
    except (OSError, ValueError) as err:
        print(f"pi generate: error: {err}", file=sys.stderr)
        return 1
    if not out["valid"]:
        why = ("holds NaN or infinite values" if not np.isfinite(out["actions"]).all()
               else "is openpi's fallback (the normalised zero chunk): the generated tokens do not decode into actions")
        print(f"pi generate: error: the chunk {why}; it is not a prediction{' and was not written' if args.output else ''}.",
              file=sys.stderr)
        if not args.output:
            print(json.dumps({"actions": out["actions"].tolist(), "valid": False}, allow_nan=True))
        return 1
    if not args.output:
        print(json.dumps({"actions": out["actions"].tolist(), "valid": True}))
        return 0
    try:
        with open(args.output, "wb") as file:
            np.save(file, out["actions"])
    except OSError as err:
        print(f"pi generate: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


def _policy(model: str, device: str | None):
    """The "robotics" pipeline of the folder; unreadable weights and a device torch cannot use as `ValueError`s."""
    check_source(model)
    if device is not None:
        check_device(device, "--device")
    try:
        return pipeline(TASK, model=str(model), device=device)
    except SafetensorError as err:
        raise ValueError(f"{model}: its weights cannot be read ({err}).") from err


def _read_images(specs: list[str]) -> dict:
    """["NAME=FILE", ...] -> {camera: PIL image}."""
    images = {}
    for spec in specs:
        camera, equals, path = spec.partition("=")
        if not (camera and equals and path):
            raise ValueError(f"--image takes NAME=FILE (e.g. base_0_rgb=front.png), got {spec!r}.")
        if camera in images:
            raise ValueError(f"Camera {camera!r} is given twice.")
        try:
            with Image.open(path) as image:
                image.load()  # read now: the file closes here
        except FileNotFoundError:
            raise ValueError(f"--image {spec}: no such file.") from None
        except (OSError, Image.DecompressionBombError) as err:
            raise ValueError(f"--image {spec}: not an image Pillow can read ({err}).") from None
        images[camera] = image
    return images


def _parse_state(text: str) -> list[float]:
    try:
        return [float(value) for value in text.split(",")]
    except ValueError:
        raise ValueError(f"--state takes comma-separated numbers (e.g. 0.1,-0.2,0.3), got {text!r}.") from None

"""The "robotics" pipeline: a robot's observation in, an action chunk in the robot's units out.

    import modeling_pi                       # registers the task
    from transformers import pipeline

    policy = pipeline("robotics", model="converted/pi05")   # PiForActionGeneration + PiProcessor
    out = policy(images={"base_0_rgb": img, "left_wrist_0_rgb": wrist}, prompt="fold the towel", state=raw_state,
                 num_steps=10, seed=0)
    out["actions"]                           # np.ndarray [H, robot action dim], float32
    out["valid"]                             # False where a π0-FAST answer did not decode (its actions are then openpi's
                                             # fallback, the normalised zero chunk) or the chunk is not finite: not a prediction
    policy([observation, ...])               # {"images", "prompt", "state"} dicts: one model batch, a list of outputs

A model whose processor knows its robot (converted with `--config` or `--robot`) takes that robot's raw
observations instead, as its clients send them, and answers in the robot's commands:

    policy = pipeline("robotics", model="converted/pi0_aloha")
    policy({"images": {"cam_high": chw, ...}, "state": joints, "prompt": "fold the towel"}, noise=noise)

It is `PiProcessor` -> `generate_actions` -> `PiProcessor.post_process` and nothing more, so that serving code,
notebooks and `pi generate` get the numbers of those three calls written out. Every keyword but `seed` goes to
`generate_actions` (`num_steps`, `solver`, `noise` for π0 / π0.5; `max_new_tokens`, `temperature`,
`allowed_token_ids` for π0-FAST; a `noise` [H, D] is one chunk's); `seed` seeds a generator on the model's device
for each model call. The model
casts its inputs to its own dtype (and keeps the flow in float32), so the pipeline only places them on its device.

`pi generate` is the same from the command line (`add_arguments` / `run`):

    pi generate --model FOLDER --image NAME=FILE [--image NAME=FILE ...] --prompt TEXT --state V1,V2,...
                [--num-steps N] [--seed S] [--device DEVICE] [--output actions.npy]

It prints the chunk as JSON ({"actions": [[...], ...], "valid": true}), or with `--output` saves it with `np.save`.
A chunk that is not a prediction (`valid` false) is printed with `"valid": false` and never saved, and the
command exits 1.
"""

import argparse
import json
import sys

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, Pipeline, pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from processing_pi import PiProcessor

TASK = "robotics"
OBSERVATION_FIELDS = ("images", "prompt", "state")


class RoboticsPipeline(Pipeline):
    """π0 / π0.5 / π0-FAST as a policy: `policy(images=..., prompt=..., state=...)` -> {"actions", "valid"}."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, model, processor: PiProcessor | None = None, **kwargs):
        if not isinstance(processor, PiProcessor):
            raise ValueError(
                f"The {TASK} pipeline needs the model's PiProcessor (processor_config.json in the model folder: convert "
                f"with --tokenizer, or pass processor=...), got {type(processor).__name__}."
            )
        super().__init__(model, processor=processor, **kwargs)

    def __call__(self, observations: dict | list[dict] | None = None, **kwargs):
        """One observation (a dict of images, prompt and state, or those as keywords) -> {"actions", "valid"}; a list
        of observations -> a list of those, run as one model batch unless `batch_size` says otherwise."""
        fields = {name: kwargs.pop(name) for name in OBSERVATION_FIELDS if name in kwargs}
        if observations is None:
            observations = fields
        elif fields:
            raise ValueError(f"Pass the observation as the first argument or as {', '.join(fields)}=..., not both.")
        if isinstance(observations, list):
            if not observations:
                raise ValueError("Empty list of observations.")
            kwargs.setdefault("batch_size", self._batch_size or len(observations))
        return super().__call__(observations, **kwargs)

    def _sanitize_parameters(self, seed: int | None = None, **generate_kwargs):
        if seed is not None:
            if "generator" in generate_kwargs:
                raise ValueError("Pass seed or generator, not both.")
            generate_kwargs["seed"] = seed
        if "noise" in generate_kwargs:
            noise = torch.as_tensor(generate_kwargs["noise"], dtype=torch.float32)
            generate_kwargs["noise"] = noise[None] if noise.ndim == 2 else noise
        return {}, generate_kwargs, {}

    def preprocess(self, observation):
        robot = self.processor.robot
        if robot is not None:  # the robot's own observation, read by its layout
            inputs = self.processor(observation=observation, return_tensors="pt")
            inputs["robot_state"] = torch.from_numpy(robot.state(observation))[None]
            return inputs
        if not isinstance(observation, dict):
            raise ValueError(f"An observation is a dict of {', '.join(OBSERVATION_FIELDS)}, got {type(observation).__name__}.")
        unknown = sorted(set(observation) - set(OBSERVATION_FIELDS))
        if unknown:
            raise ValueError(f"Unknown observation field(s) {', '.join(unknown)}; expected {', '.join(OBSERVATION_FIELDS)}.")
        if observation.get("images") is None:
            cameras = ", ".join(self.processor.image_keys)
            raise ValueError(f"The observation has no images (a dict of camera -> image; cameras: {cameras}).")
        if not isinstance(observation.get("prompt"), str):
            raise ValueError(f"The observation needs one prompt string, got {observation.get('prompt')!r} "
                             "(a batch is a list of observations).")
        return self.processor(**observation, return_tensors="pt")

    def _forward(self, model_inputs, seed: int | None = None, **generate_kwargs):
        if seed is not None:
            generate_kwargs["generator"] = torch.Generator(self.device).manual_seed(seed)
        generate_kwargs = self._ensure_tensor_on_device(generate_kwargs, self.device)
        robot_state = model_inputs.pop("robot_state", None)
        return {"generated": self.model.generate_actions(**model_inputs, **generate_kwargs), "robot_state": robot_state}

    def postprocess(self, model_outputs) -> dict:
        robot_state = model_outputs["robot_state"]
        robot_state = None if robot_state is None else robot_state.cpu()
        out = self.processor.post_process(model_outputs["generated"], robot_state=robot_state)
        return {"actions": out.actions[0].numpy(), "valid": bool(out.valid[0])}


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=RoboticsPipeline, pt_model=AutoModel, type="multimodal")


# ---- pi generate ---------------------------------------------------------------------------------


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
        policy = pipeline(TASK, model=str(args.model), device=args.device)
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


def _read_images(specs: list[str]) -> dict:
    """["NAME=FILE", ...] -> {camera: PIL image}."""
    images = {}
    for spec in specs:
        camera, equals, path = spec.partition("=")
        if not (camera and equals and path):
            raise ValueError(f"--image takes NAME=FILE (e.g. base_0_rgb=front.png), got {spec!r}.")
        if camera in images:
            raise ValueError(f"Camera {camera!r} is given twice.")
        with Image.open(path) as image:
            image.load()  # read now: the file closes here
        images[camera] = image
    return images


def _parse_state(text: str) -> list[float]:
    try:
        return [float(value) for value in text.split(",")]
    except ValueError:
        raise ValueError(f"--state takes comma-separated numbers (e.g. 0.1,-0.2,0.3), got {text!r}.") from None

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
`allowed_token_ids` for π0-FAST; a `noise` [H, D] is one chunk's, used for each observation, and [N, H, D] gives each
of a list of N observations its own); `seed` seeds a generator on the model's device
for each model call. The model
casts its inputs to its own dtype (and keeps the flow in float32), so the pipeline only places them on its device.
"""

import numpy as np
import torch
from transformers import AutoModel, Pipeline
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
        if "observation" in kwargs:  # the processor's name for it
            if observations is not None:
                raise ValueError("Pass the observation as the first argument or as observation=..., not both.")
            observations = kwargs.pop("observation")
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
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise ValueError(f"seed must be an integer, got {seed!r}.")
            generate_kwargs["seed"] = int(seed)
        if "noise" in generate_kwargs:
            generate_kwargs["noise"] = torch.as_tensor(generate_kwargs["noise"], dtype=torch.float32)
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
        noise = generate_kwargs.get("noise")
        if noise is not None:
            batch = model_inputs["pixel_values"].shape[0]
            if noise.ndim == 2:  # one chunk's noise, for each observation
                generate_kwargs["noise"] = noise.expand(batch, *noise.shape)
            elif noise.ndim == 3 and len(noise) != batch:
                raise ValueError(f"noise holds {len(noise)} chunks for a model batch of {batch} observation(s): pass one "
                                 "chunk's noise [H, D], used for each, or [N, H, D] for a list of N observations run as "
                                 "one batch (without a smaller batch_size).")
        generate_kwargs = self._ensure_tensor_on_device(generate_kwargs, self.device)
        robot_state = model_inputs.pop("robot_state", None)
        return {"generated": self.model.generate_actions(**model_inputs, **generate_kwargs), "robot_state": robot_state}

    def postprocess(self, model_outputs) -> dict:
        robot_state = model_outputs["robot_state"]
        robot_state = None if robot_state is None else robot_state.cpu()
        out = self.processor.post_process(model_outputs["generated"], robot_state=robot_state)
        return {"actions": out.actions[0].numpy(), "valid": bool(out.valid[0])}


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=RoboticsPipeline, pt_model=AutoModel, type="multimodal")

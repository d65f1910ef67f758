"""PiProcessor: raw cameras, prompt and robot state -> model inputs; model output -> robot actions.

    inputs = processor(images={"base_0_rgb": img, ...}, prompt="fold the towel", state=raw_state,
                       actions=raw_chunk,            # training only
                       return_tensors="pt")
    out = processor.post_process(model.generate_actions(**inputs))   # out.actions, out.valid
    actions, valid = processor.post_process(generated)                # or unpacked

A saved processor is loaded with `PiProcessor.from_pretrained(folder, **settings)` (or `AutoProcessor`): any
constructor argument but the image processor and tokenizer, given there, replaces the saved one, e.g. to complete
a converted folder (docs/conversion.md):

    processor = PiProcessor.from_pretrained(folder, norm_stats="norm_stats.json", robot_action_dim=7)
    processor.save_pretrained(folder)

A processor that knows its robot (`robot`, a `Robot`: a folder converted with `--config` or `--robot`) also
takes the raw observation a robot client sends and answers in that robot's commands:

    inputs = processor(observation=obs)                               # or a list of observations
    out = processor.post_process(generated, observation=obs)          # e.g. ALOHA's absolute joint targets

The outputs are the inputs `PiForActionGeneration` takes. Normalisation follows the variant (z-score for π0,
quantile for π0.5 and π0-FAST) unless `norm_mode` says otherwise; with `norm_stats=None` state and actions
are taken as already normalised. π0 gets the state as a vector padded to `action_dim`; π0.5 and π0-FAST
read its 256-bin discretisation in the prompt (π0.5 not with `discrete_state_input=False`). π0-FAST
training sequences come with `token_type_ids` and `labels`; its generated ids are cut between "Action: "
and "|" and FAST-decoded. A π0.5 processor with `knowledge_insulation` (and a FAST `action_tokenizer`) writes
the same targets after its training prompts, beside `actions`.

`conventions` records whose pre- and post-processing the policy was trained with: "openpi" (the default)
or "lerobot" (a folder converted from LeRobot): LeRobot's normaliser epsilon, prompt text, float image
resize and lenient FAST decoding (see `normalization`, `prompts`, `image_processing_pi`).
"""

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from transformers import BatchFeature, PreTrainedTokenizerFast
from transformers.processing_utils import ProcessorMixin

from configuration_pi.configuration_pi import DEFAULT_IMAGE_KEYS, DEFAULT_MAX_TOKEN_LEN, VARIANTS

from .fast_action_tokenizer import FastActionTokenizer
from .image_processing_pi import PiImageProcessor
from .normalization import CONVENTIONS, MODES, NormStats
from .prompts import PromptTooLong, fast_ids_to_vocab, tokenize_prompt
from .robots import Robot

DEFAULT_NORM_MODE = {"pi0": "zscore", "pi05": "quantile", "pi0_fast": "quantile"}
FAST_FOLDER = "fast_tokenizer"
PROCESSOR_CONFIG = "processor_config.json"
TOKENIZER_FILE = "tokenizer.json"  # the prompt tokenizer as `tokenizers` saves it
TOKENIZER_CONFIG = "tokenizer_config.json"  # its special tokens (pad, BOS, EOS)
PROCESSOR_FILES = [PROCESSOR_CONFIG, "tokenizer*.json", "special_tokens_map.json", f"{FAST_FOLDER}/*"]
HUB_OPTIONS = ("revision", "token", "cache_dir", "local_files_only", "force_download")
# What the Auto classes and `pipeline()` pass to every `from_pretrained`; they concern the model, not a processor,
# which runs no code from the folder and has no device or dtype.
LOADER_OPTIONS = ("trust_remote_code", "code_revision", "_from_auto", "_from_pipeline", "device_map", "dtype", "torch_dtype")
SETTINGS = ("variant", "image_keys", "max_token_len", "action_dim", "action_horizon", "robot_action_dim", "norm_mode",
            "discrete_state_input", "conventions", "knowledge_insulation")
# What `from_pretrained(**settings)` and `replace` may change: every constructor argument but the two sub-processors.
OVERRIDES = (*SETTINGS, "norm_stats", "robot", "action_tokenizer")


class PiActionOutput(NamedTuple):
    """
    actions (`torch.FloatTensor` of shape `(batch, horizon, robot action dim)`): in the robot's units.
    valid (`torch.BoolTensor` of shape `(batch,)`): False where a FAST sequence did not decode (its actions are then
        openpi's fallback, the zero chunk in normalised units taken to the robot's) or where the chunk holds a NaN or
        infinite value: not a prediction, do not execute.

    A named pair, read as `out.actions`, `out["actions"]` or `actions, valid = out`. Not a transformers
    `ModelOutput`: that is a dict, and unpacking a dict gives its keys (the strings "actions" and "valid").
    """

    actions: torch.FloatTensor
    valid: torch.BoolTensor

    def __getitem__(self, key):
        """By field name ("actions", "valid") as well as by position."""
        if isinstance(key, str):
            if key not in self._fields:
                raise KeyError(f"{key!r}: a PiActionOutput holds {', '.join(self._fields)}.")
            return getattr(self, key)
        return tuple.__getitem__(self, key)


def _batch(array, ndim: int, name: str) -> np.ndarray:
    """[...] or [B, ...] -> [B, ...] float64, refusing NaN/inf."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == ndim - 1:
        array = array[None]
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim - 1} dims (or {ndim} with a batch dim), got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return array


def _check_names(given, where: str, hub: tuple = (), ignored: tuple = ()) -> None:
    """Refuses keywords that are neither settings (`OVERRIDES`), nor Hub options, nor ones to ignore."""
    unknown = sorted(set(given) - set(OVERRIDES) - set(hub) - set(ignored))
    if unknown:
        hub_text = f"; the Hub options {', '.join(hub)}" if hub else ""
        raise TypeError(f"{where} got unknown keyword argument(s) {', '.join(unknown)}; it takes the processor's "
                        f"settings {', '.join(OVERRIDES)}{hub_text}.")


def _norm_stats(value) -> NormStats | None:
    """`NormStats`, their dict (`NormStats.to_dict`) or a JSON file (openpi's norm_stats.json, LeRobot's stats.json)."""
    if value is None or isinstance(value, NormStats):
        return value
    if isinstance(value, dict):
        return NormStats.from_dict(value)
    if isinstance(value, (str, os.PathLike)):
        return NormStats.from_json(value)
    raise ValueError(f"norm_stats must be NormStats, a dict of them or a JSON file, got {type(value).__name__}.")


def _pad(array: np.ndarray, dim: int, name: str) -> np.ndarray:
    """`array` [..., n] -> float32 [..., dim], zero-padded: states and actions as the model takes them."""
    if array.shape[-1] > dim:
        raise ValueError(f"{name} has {array.shape[-1]} dims, more than the model's action_dim={dim}.")
    return np.pad(array, [(0, 0)] * (array.ndim - 1) + [(0, dim - array.shape[-1])]).astype(np.float32)


class PiProcessor(ProcessorMixin):
    """Images, prompt, tokenizer, normalisation and post-processing of the π family, reference-exact."""

    def __init__(
        self,
        image_processor: PiImageProcessor,
        tokenizer,
        action_tokenizer: FastActionTokenizer | None = None,
        norm_stats: NormStats | dict | str | os.PathLike | None = None,
        variant: str = "pi0",
        image_keys=DEFAULT_IMAGE_KEYS,
        max_token_len: int | None = None,
        action_dim: int = 32,
        action_horizon: int | None = None,
        robot_action_dim: int | None = None,
        norm_mode: str | None = None,
        discrete_state_input: bool | None = None,
        robot: Robot | dict | None = None,
        conventions: str | None = None,
        knowledge_insulation: bool = False,
    ):
        """`norm_stats`: `NormStats`, their dict or a JSON file (`NormStats.from_json`); None: inputs are taken as
        normalised. `action_horizon`: the chunk length FAST ids decode to (default: the FAST tokenizer's). `robot_action_dim`:
        the robot's own action dims, which post-processing keeps (default: the robot's, else the size of the action
        statistics). `discrete_state_input`: whether the prompt carries the state (default: all but π0; π0-FAST
        always does). `robot`: the robot whose raw observations `observation=` takes (module docstring).
        `conventions`: whose pre- and post-processing a policy was trained with, "openpi" or "lerobot" (default:
        the image processor's, "openpi" unless set). `knowledge_insulation` (π0.5, with an `action_tokenizer`):
        training prompts end with the chunk's FAST tokens, as `pi train --knowledge-insulation` trains."""
        super().__init__(image_processor, tokenizer)
        if variant not in VARIANTS:
            raise ValueError(f"Unknown π variant {variant!r}; expected one of {', '.join(VARIANTS)}.")
        if variant == "pi0_fast" and action_tokenizer is None:
            raise ValueError("π0-FAST needs its FAST action tokenizer (action_tokenizer=FastActionTokenizer...).")
        self.conventions = conventions or image_processor.conventions
        if self.conventions not in CONVENTIONS:
            raise ValueError(f"conventions must be one of {', '.join(CONVENTIONS)}, got {conventions!r}.")
        if image_processor.conventions != self.conventions:
            raise ValueError(f"The image processor follows {image_processor.conventions}'s conventions, the processor "
                             f"{self.conventions}'s: build both with the same.")
        self.action_tokenizer = action_tokenizer
        self.variant = variant
        self.knowledge_insulation = bool(knowledge_insulation)
        if self.knowledge_insulation and (variant != "pi05" or action_tokenizer is None):
            raise ValueError("knowledge_insulation is π0.5's, and writes FAST targets: it needs an action_tokenizer.")
        self.image_keys = list(image_keys)
        for name, value in (("max_token_len", max_token_len), ("action_dim", action_dim), ("action_horizon", action_horizon)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}.")  # 0 read as unset
        self.max_token_len = max_token_len or DEFAULT_MAX_TOKEN_LEN[variant]
        self.action_dim = int(action_dim)
        self.action_horizon = action_horizon
        self.robot_action_dim = self._checked_robot_action_dim(robot_action_dim)
        self.norm_mode = norm_mode or DEFAULT_NORM_MODE[variant]
        if self.norm_mode not in MODES:
            raise ValueError(f"norm_mode must be one of {', '.join(MODES)}, got {norm_mode!r}.")
        self.norm_stats = norm_stats = _norm_stats(norm_stats)
        if norm_stats is not None:  # missing statistics are an error now, not a silent identity later
            for key in ("state", "actions"):
                norm_stats.get(key, self.norm_mode)
        self.discrete_state_input = variant != "pi0" if discrete_state_input is None else bool(discrete_state_input)
        if variant == "pi0_fast" and not self.discrete_state_input:
            raise ValueError("π0-FAST always reads the state in its prompt: discrete_state_input cannot be False.")
        if self.knowledge_insulation and not self.discrete_state_input:
            raise ValueError("knowledge_insulation writes FAST targets after π0.5's \"Action: \", a prompt with the state in "
                             "it: discrete_state_input cannot be False.")
        self.robot = Robot.from_dict(robot) if isinstance(robot, dict) else robot
        if self.robot is not None:
            unknown = sorted(set(self.robot.cameras) - set(self.image_keys))
            if unknown:
                raise ValueError(f"The robot's camera(s) {', '.join(unknown)} are not the model's ({', '.join(self.image_keys)}).")
            if variant != "pi0_fast" and (self.robot.action_dim or 0) > self.action_dim:
                raise ValueError(f"The robot's action_dim={self.robot.action_dim} is more than the model's "
                                 f"action_dim={self.action_dim}, the dims it generates.")
        kept, source = self.robot_action_dim_source()
        if norm_stats is not None and kept and kept > norm_stats.actions.dim:  # past them, dims stay normalised
            name = "robot_action_dim" if source == "robot_action_dim" else f"the {source}'s action_dim"
            raise ValueError(f"{name}={kept} is more than the {norm_stats.actions.dim} action dims the normalisation "
                             "statistics cover: the dims past them would not be un-normalised.")

    def _checked_robot_action_dim(self, dim) -> int | None:
        if dim is None:
            return None
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"robot_action_dim must be a positive whole number of dims, got {dim!r}.")
        if self.variant != "pi0_fast" and dim > self.action_dim:
            raise ValueError(f"robot_action_dim={dim} is more than the model's action_dim={self.action_dim}, the dims "
                             "it generates.")
        return int(dim)

    @classmethod
    def get_attributes(cls):
        # The FAST action tokenizer is not a text tokenizer: it is saved in its own folder, not by ProcessorMixin.
        return ["image_processor", "tokenizer"]

    # ---- inputs ------------------------------------------------------------------------------

    def __call__(self, images: dict | None = None, prompt=None, state=None, actions=None, observation=None,
                 return_tensors="pt") -> BatchFeature:
        """`images` (camera -> image or batch), `prompt` (one or a list), `state` [S] or [B, S] in robot units,
        `actions` [H, A] or [B, H, A] (training); or `observation`, a robot's raw observation (or a list of them),
        read by the processor's `robot`, with `actions` then in the robot's own commands."""
        if observation is not None:
            if images is not None or prompt is not None or state is not None:
                raise ValueError("Pass either `observation` or images / prompt / state, not both.")
            images, prompt, state, actions = self._read_observations(observation, actions)
        if prompt is None:
            raise ValueError("Pass a `prompt` (or an `observation`).")
        prompts = [prompt] if isinstance(prompt, str) else None
        if isinstance(prompt, (list, tuple, np.ndarray)):
            prompts = list(prompt)
        if prompts is None or not all(isinstance(text, str) for text in prompts):
            raise ValueError(f"prompt must be a string or a list of strings, got {prompt!r:.80}")
        batch = len(prompts)
        if batch == 0:
            raise ValueError("Empty batch: no prompt.")
        features = self._images(images, batch)
        state = self._state(state, batch)
        chunks = self._actions(actions, batch)

        fast_ids = [None] * batch
        fast_targets = chunks is not None and (self.variant == "pi0_fast" or self.knowledge_insulation)
        if fast_targets:
            horizon = self.action_horizon or self.action_tokenizer.time_horizon
            dim, source = self.robot_action_dim_source()
            # tokens of any other shape would train answers that decode to no chunk
            if horizon and chunks.shape[1] != horizon:
                raise ValueError(f"actions holds chunks of {chunks.shape[1]} steps; the FAST tokens of this model decode "
                                 f"to {horizon} (action_horizon).")
            if dim and chunks.shape[2] != dim:
                raise ValueError(f"actions holds chunks of {chunks.shape[2]} action dims; the FAST tokens of this model "
                                 f"decode to {dim} (from its {source}).")
            fast_ids = self.action_tokenizer(chunks)
        tokens = [
            tokenize_prompt(self.tokenizer, self.variant, text, self.max_token_len, state[i], fast_ids[i],
                            state_in_prompt=self.discrete_state_input, conventions=self.conventions)
            for i, text in enumerate(prompts)
        ]
        features["input_ids"] = np.array([t.input_ids for t in tokens], dtype=np.int64)
        features["attention_mask"] = np.array([t.attention_mask for t in tokens], dtype=bool)
        if self.variant == "pi0":
            features["state"] = _pad(state, self.action_dim, "state")
        if fast_targets:
            features["token_type_ids"] = np.array([t.token_type_ids for t in tokens], dtype=np.int64)
            features["labels"] = np.where([t.loss_mask for t in tokens], features["input_ids"], -100)
        if chunks is not None and self.variant != "pi0_fast":
            features["actions"] = _pad(chunks, self.action_dim, "actions")
        return BatchFeature(features, tensor_type=return_tensors)

    def _read_observations(self, observation, actions) -> tuple:
        """Raw observation(s) -> images (None where a camera is masked), prompts, robot states, training targets."""
        if self.robot is None:
            raise ValueError("This processor has no robot layout to read raw observations with: convert the model with "
                             "--config or --robot, or pass images, prompt and state.")
        observations = observation if isinstance(observation, (list, tuple)) else [observation]
        fields = [self.robot.read(item) for item in observations]
        images = {camera: [f["images"][camera] for f in fields] for camera in self.robot.cameras}
        state = np.stack([f["state"] for f in fields])
        if actions is not None:
            actions = self.robot.from_robot(_batch(actions, 3, "actions"), state)
        return images, [f["prompt"] for f in fields], state, actions

    def _images(self, images: dict, batch: int) -> dict:
        if not isinstance(images, dict):
            raise ValueError(f"images must be a dict of camera name -> images (cameras: {', '.join(self.image_keys)}).")
        unknown = sorted(set(images) - set(self.image_keys))
        if unknown:
            raise ValueError(f"Unknown camera(s) {', '.join(unknown)}; the model's cameras are {', '.join(self.image_keys)}.")
        size = self.image_processor.size
        pixel_values = np.full((batch, len(self.image_keys), 3, size, size), -1.0, dtype=np.float32)  # blank: black
        present = np.zeros((batch, len(self.image_keys)), dtype=bool)
        for i, camera in enumerate(self.image_keys):
            value = images.get(camera)
            if value is None:  # absent, as a camera left out is
                continue
            # a list may hold None for the examples that lack this camera
            rows = list(range(batch))
            if isinstance(value, (list, tuple)) and any(item is None for item in value):
                if len(value) != batch:
                    raise ValueError(f"Camera {camera!r} has {len(value)} entries for a batch of {batch} prompts.")
                rows = [b for b, item in enumerate(value) if item is not None]
                value = [value[b] for b in rows]
                if not rows:
                    continue
            values = self.image_processor.preprocess(value, camera=camera)["pixel_values"]
            if len(values) != len(rows):
                raise ValueError(f"Camera {camera!r} has {len(values)} images for a batch of {batch} prompts.")
            pixel_values[rows, i], present[rows, i] = values, True
        if not present.any():
            raise ValueError(f"No camera given; the model's cameras are {', '.join(self.image_keys)}.")
        blind = np.flatnonzero(~present.any(axis=1)).tolist()
        if blind:  # the model would act on the prompt alone, and the chunk would look like any other
            raise ValueError(f"No camera given for example(s) {blind} of the batch; each needs at least one of "
                             f"{', '.join(self.image_keys)}.")
        return {"pixel_values": pixel_values, "pixel_attention_mask": present}

    def _state(self, state, batch: int) -> np.ndarray:
        if state is None:
            raise ValueError(f"{self.variant} needs the robot state: pass `state`.")
        state = _batch(state, 2, "state")
        if len(state) != batch:
            raise ValueError(f"state has batch size {len(state)} for {batch} prompts.")
        if self.norm_stats is not None:
            state = self.norm_stats.get("state", self.norm_mode).normalize(state, self.norm_mode, self.conventions, "state")
        return state

    def normalize_state(self, state) -> np.ndarray:
        """Robot states [S] or [B, S] -> normalised [B, S] (as given, without statistics), before any padding."""
        states = _batch(state, 2, "state")
        return self._state(states, len(states))

    def check_prompt(self, prompt: str, state=None, with_targets: bool = False) -> None:
        """Raises `PromptTooLong` where `prompt`, with the robot `state` [S] (π0.5 and π0-FAST write it into the
        prompt), does not fit `max_token_len`, with room for training targets after it where they share the budget
        (`with_targets`: π0-FAST, knowledge insulation): what a training run checks for each task before its start."""
        normalised = None if state is None else self._state(state, 1)[0]
        tokens = tokenize_prompt(self.tokenizer, self.variant, prompt, self.max_token_len, normalised,
                                 state_in_prompt=self.discrete_state_input, conventions=self.conventions)
        targets_follow = self.knowledge_insulation or (self.variant == "pi0_fast" and self.conventions != "lerobot")
        if with_targets and targets_follow and sum(tokens.attention_mask) >= self.max_token_len:
            raise PromptTooLong(f"The {self.variant} prompt takes all {self.max_token_len} tokens of max_token_len, "
                                "leaving none for the training targets. Shorten the task or raise max_token_len.")

    def normalize_actions(self, actions) -> np.ndarray:
        """Action chunks [H, A] or [B, H, A], as datasets store them (before normalisation; not a robot's own commands,
        which `observation=` reads) -> float32 [B, H, action_dim], normalised and zero-padded as the `actions` of a call
        are: e.g. a training batch's `prefix_actions`."""
        chunks = _batch(actions, 3, "actions")
        return _pad(self._actions(chunks, len(chunks)), self.action_dim, "actions")

    def _actions(self, actions, batch: int) -> np.ndarray | None:
        if actions is None:
            return None
        chunks = _batch(actions, 3, "actions")
        if len(chunks) != batch:
            raise ValueError(f"actions has batch size {len(chunks)} for {batch} prompts.")
        if self.norm_stats is not None:
            chunks = self.norm_stats.get("actions", self.norm_mode).normalize(chunks, self.norm_mode, self.conventions,
                                                                              "actions")
        return chunks

    def action_token_ids(self) -> torch.Tensor:
        """π0-FAST: the ids a well-formed answer uses ("Action: ", the FAST range, "|", EOS), for constrained
        decoding (`model.generate_actions(..., allowed_token_ids=processor.action_token_ids())`)."""
        if self.action_tokenizer is None:
            raise ValueError("Only π0-FAST decodes action tokens.")
        fast_range = fast_ids_to_vocab(range(self.action_tokenizer.vocab_size), self.tokenizer.vocab_size)
        framing = self.tokenizer.encode("Action: ", add_special_tokens=False) + self.tokenizer.encode("|", add_special_tokens=False)
        return torch.tensor(sorted(set(fast_range + framing + [self.tokenizer.eos_token_id])))

    # ---- outputs -----------------------------------------------------------------------------

    def post_process(self, generated, observation=None, robot_state=None) -> PiActionOutput:
        """Flow output [B, H, D] or FAST ids [B, T] -> actions in robot units [B, H, robot dim] and validity [B].
        With the `observation`(s) the inputs came from, or their states as `self.robot.state` reads them
        (`robot_state` [B, S]), the processor's robot turns the actions into its commands."""
        generated = generated.detach().cpu() if hasattr(generated, "detach") else torch.as_tensor(generated)
        if self.variant == "pi0_fast":
            if generated.ndim != 2 or generated.is_floating_point():
                raise ValueError(f"Expected π0-FAST's generated token ids [B, T] (the model's output), got "
                                 f"{generated.dtype} of shape {tuple(generated.shape)}.")
            actions, valid = self._decode_fast(generated.long().tolist())
        else:
            if generated.ndim != 3 or generated.shape[-1] != self.action_dim:  # any number of steps: a part of a chunk
                raise ValueError(f"Expected a normalised action chunk [B, H, {self.action_dim}] (the model's output, "
                                 f"action_dim wide), got shape {tuple(generated.shape)}.")
            actions, valid = generated.double().numpy(), np.ones(len(generated), dtype=bool)
        if self.norm_stats is not None:  # wider statistics than the chunk (FAST decodes the robot's dims): its first dims
            stats = self.norm_stats.cut(actions=actions.shape[-1]).get("actions", self.norm_mode)
            actions = stats.unnormalize(actions, self.norm_mode, self.conventions)
        actions = actions[..., : self._robot_action_dim() or actions.shape[-1]]
        if observation is not None or robot_state is not None:
            actions = self._to_robot(actions, observation, robot_state)
        actions = torch.from_numpy(actions).float()  # finite in float64 may still overflow float32's range
        valid &= torch.isfinite(actions).flatten(1).all(dim=1).numpy()
        return PiActionOutput(actions=actions, valid=torch.from_numpy(valid))

    def _to_robot(self, actions: np.ndarray, observation, robot_state) -> np.ndarray:
        if self.robot is None:
            raise ValueError("post_process(observation=...) needs the processor's robot layout, which it has none of.")
        if observation is not None and robot_state is not None:
            raise ValueError("Pass `observation` or `robot_state`, not both.")
        if robot_state is None:
            observations = observation if isinstance(observation, (list, tuple)) else [observation]
            robot_state = np.stack([self.robot.state(item) for item in observations])
        robot_state = _batch(robot_state, 2, "robot_state")
        if len(robot_state) != len(actions):
            raise ValueError(f"{len(robot_state)} observation(s) for {len(actions)} generated chunk(s).")
        return self.robot.to_robot(actions, robot_state)

    def _robot_action_dim(self) -> int | None:
        return self.robot_action_dim_source()[0]

    def robot_action_dim_source(self) -> tuple[int | None, str | None]:
        """The robot's action dims `post_process` keeps, and what says so: "robot_action_dim", "robot" (its
        layout), "statistics" (the action statistics' size) or "FAST tokenizer"; (None, None) when nothing does
        (a flow model's output then keeps all `action_dim` dims; π0-FAST's cannot be decoded)."""
        candidates = (
            ("robot_action_dim", self.robot_action_dim),
            ("robot", self.robot.action_dim if self.robot is not None else None),
            ("statistics", self.norm_stats.actions.dim if self.norm_stats is not None else None),
            ("FAST tokenizer", self.action_tokenizer.action_dim if self.action_tokenizer is not None else None),
        )
        return next(((dim, source) for source, dim in candidates if dim), (None, None))

    def fast_chunk_shape(self) -> tuple[int, int]:
        """π0-FAST: the (horizon, robot action dims) its tokens decode to; a `ValueError` saying how to set them when
        the processor does not know them (then no generated token can become an action)."""
        horizon = self.action_horizon or self.action_tokenizer.time_horizon
        dim = self._robot_action_dim()
        if not horizon or not dim:
            raise ValueError("Decoding FAST tokens needs the chunk's horizon and action dim: set action_horizon and "
                             "robot_action_dim (or norm_stats), e.g. PiProcessor.from_pretrained(folder, robot_action_dim=N) "
                             "then .save_pretrained(folder), or convert with --robot-action-dim N / --norm-stats FILE.")
        return horizon, dim

    def _decode_fast(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        horizon, dim = self.fast_chunk_shape()
        start = self.tokenizer.encode("Action: ", add_special_tokens=False)
        if self.conventions == "lerobot":
            bar = self.tokenizer.convert_tokens_to_ids("|")
            bar = None if bar == self.tokenizer.unk_token_id else bar  # a vocabulary without "|": no cut
            fast_rows, well_formed = zip(*(self._lerobot_fast_ids(row, start, bar) for row in rows))
        else:
            end = set(self.tokenizer.encode("|", add_special_tokens=False)) | {self.tokenizer.eos_token_id}
            fast_rows = [self._fast_ids(row, start, end) for row in rows]
            well_formed = [ids is not None for ids in fast_rows]
        actions, valid = self.action_tokenizer.decode([ids or [] for ids in fast_rows], time_horizon=horizon, action_dim=dim,
                                                      lenient=self.conventions == "lerobot")
        return actions.astype(np.float64), valid & np.array(well_formed)

    def _fast_ids(self, row: list[int], start: list[int], end: set[int]) -> list[int] | None:
        """The FAST ids between "Action: " and "|" (or EOS, or the end), mapped back from the vocabulary."""
        for i in range(len(row) - len(start) + 1):
            if row[i : i + len(start)] == start:
                body = row[i + len(start) :]
                stop = next((j for j, token in enumerate(body) if token in end), len(body))
                return fast_ids_to_vocab(body[:stop], self.tokenizer.vocab_size)
        return None

    def _lerobot_fast_ids(self, row: list[int], start: list[int], bar: int | None) -> tuple[list[int], bool]:
        """LeRobot's reading of generated ids: everything before the first "|" (id `bar`), with every "Action: "
        taken out, mapped back from the vocabulary; well-formed when it began with "Action: "."""
        body = row[: row.index(bar)] if bar in row else row
        ids, i = [], 0
        while i < len(body):
            if body[i : i + len(start)] == start:
                i += len(start)
            else:
                ids.append(body[i])
                i += 1
        return fast_ids_to_vocab(ids, self.tokenizer.vocab_size), body[: len(start)] == start

    # ---- saving and loading ------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "processor_class": type(self).__name__,
            "image_processor": self.image_processor.to_dict(),
            "norm_stats": None if self.norm_stats is None else self.norm_stats.to_dict(),
            **{name: getattr(self, name) for name in SETTINGS},
            "robot": None if self.robot is None else self.robot.to_dict(),
        }

    def replace(self, **changes) -> "PiProcessor":
        """A new processor with some of its settings (`OVERRIDES`: any constructor argument but the image processor
        and tokenizer) changed, checked as at construction."""
        _check_names(changes, "PiProcessor.replace")
        current = {name: getattr(self, name) for name in OVERRIDES}
        image_processor = self.image_processor
        if "conventions" in changes:  # the image processor resizes by the processor's conventions
            image_processor = PiImageProcessor(size=image_processor.size, float_range=image_processor.float_range,
                                               conventions=changes["conventions"])
        return type(self)(image_processor, self.tokenizer, **{**current, **changes})

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs):
        """Tokenizer files, `processor_config.json` (settings, image processor, norm stats) and the FAST tokenizer.
        Saved over a folder's processor, the `auto_map` of its remote code is kept. `push_to_hub=True` then uploads
        them (`repo_id`, by default the folder's name, and `push_to_hub`'s options); `max_shard_size`, which
        `push_to_hub` passes, has nothing to shard here. Any other keyword is a `TypeError`."""
        kwargs.pop("max_shard_size", None)
        if kwargs and not push_to_hub:
            raise TypeError(f"PiProcessor.save_pretrained got unexpected keyword argument(s) {', '.join(sorted(kwargs))}.")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        settings = self.to_dict()
        if (folder / PROCESSOR_CONFIG).is_file():
            auto_map = json.loads((folder / PROCESSOR_CONFIG).read_text()).get("auto_map")
            settings.update({"auto_map": auto_map} if auto_map else {})
        (folder / PROCESSOR_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")
        if self.action_tokenizer is not None:
            self.action_tokenizer.save_pretrained(folder / FAST_FOLDER)
        if push_to_hub:
            self.push_to_hub(kwargs.pop("repo_id", folder.resolve().name), **kwargs)
        return [str(folder / PROCESSOR_CONFIG)]

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs) -> "PiProcessor":
        """A local folder, or a Hub repo (only the processor's files are downloaded). Settings (`OVERRIDES`: any
        constructor argument but the image processor and tokenizer, e.g. `norm_stats`, `robot_action_dim`) replace
        the saved ones; Hub options (`revision`, `token`, `cache_dir`, `local_files_only`, `force_download`) are
        honoured; the options the Auto classes and `pipeline()` pass for the model (`trust_remote_code`, `dtype`,
        ...) do not apply: nothing here runs code from the folder. Any other keyword is a `TypeError`."""
        _check_names(kwargs, "PiProcessor.from_pretrained", hub=HUB_OPTIONS, ignored=LOADER_OPTIONS)
        folder = Path(path_or_repo)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            hub_kwargs = {key: kwargs[key] for key in HUB_OPTIONS if kwargs.get(key) is not None}
            folder = Path(snapshot_download(str(path_or_repo), allow_patterns=PROCESSOR_FILES, **hub_kwargs))
        if not (folder / PROCESSOR_CONFIG).is_file():
            raise ValueError(f"{path_or_repo} has no {PROCESSOR_CONFIG}: not a saved PiProcessor.")
        missing = [name for name in (TOKENIZER_FILE, TOKENIZER_CONFIG) if not (folder / name).is_file()]
        if missing:  # without its config, the tokenizer loads with no special tokens, and fails at the first prompt
            raise ValueError(f"{path_or_repo} has a {PROCESSOR_CONFIG} but no {' or '.join(missing)}: the processor's "
                             f"tokenizer is missing (save the processor again, or copy the whole folder).")
        config = json.loads((folder / PROCESSOR_CONFIG).read_text())
        image_config = {k: v for k, v in config["image_processor"].items() if k != "image_processor_type"}
        fast_folder = folder / FAST_FOLDER
        saved = {
            "action_tokenizer": FastActionTokenizer.from_pretrained(fast_folder) if fast_folder.is_dir() else None,
            "norm_stats": NormStats.from_dict(config["norm_stats"]) if config.get("norm_stats") else None,
            "robot": config.get("robot"),
            **{name: config[name] for name in SETTINGS if name in config},
        }
        changes = {name: kwargs[name] for name in OVERRIDES if name in kwargs}
        if "conventions" in changes:  # the image processor resizes by the processor's conventions
            image_config["conventions"] = changes["conventions"]
        return cls(PiImageProcessor(**image_config), PreTrainedTokenizerFast.from_pretrained(folder), **{**saved, **changes})

"""PiProcessor: raw cameras, prompt and robot state -> model inputs; model output -> robot actions.

    inputs = processor(images={"base_0_rgb": img, ...}, prompt="fold the towel", state=raw_state,
                       actions=raw_chunk,            # training only
                       return_tensors="pt")
    out = processor.post_process(model.generate_actions(**inputs))   # out.actions, out.valid

A processor that knows its robot (`robot`, a `Robot`: a folder converted with `--config` or `--robot`) also
takes the raw observation a robot client sends and answers in that robot's commands:

    inputs = processor(observation=obs)                               # or a list of observations
    out = processor.post_process(generated, observation=obs)          # e.g. ALOHA's absolute joint targets

The outputs are the inputs `PiForActionGeneration` takes. Normalisation follows the variant (z-score for π0,
quantile for π0.5 and π0-FAST) unless `norm_mode` says otherwise; with `norm_stats=None` state and actions
are taken as already normalised. π0 gets the state as a vector padded to `action_dim`; π0.5 and π0-FAST
read its 256-bin discretisation in the prompt (π0.5 not with `discrete_state_input=False`). π0-FAST
training sequences come with `token_type_ids` and `labels`; its generated ids are cut between "Action: "
and "|" and FAST-decoded.

`conventions` records whose pre- and post-processing the policy was trained with: "openpi" (the default)
or "lerobot" (a folder converted from LeRobot): LeRobot's normaliser epsilon, prompt text, float image
resize and lenient FAST decoding (see `normalization`, `prompts`, `image_processing_pi`).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import BatchFeature, PreTrainedTokenizerFast
from transformers.processing_utils import ProcessorMixin
from transformers.utils import ModelOutput

from configuration_pi.configuration_pi import DEFAULT_IMAGE_KEYS, DEFAULT_MAX_TOKEN_LEN, VARIANTS

from .fast_action_tokenizer import FastActionTokenizer
from .image_processing_pi import PiImageProcessor
from .normalization import CONVENTIONS, MODES, NormStats
from .prompts import fast_ids_to_vocab, tokenize_prompt
from .robots import Robot

DEFAULT_NORM_MODE = {"pi0": "zscore", "pi05": "quantile", "pi0_fast": "quantile"}
FAST_FOLDER = "fast_tokenizer"
PROCESSOR_CONFIG = "processor_config.json"
PROCESSOR_FILES = [PROCESSOR_CONFIG, "tokenizer*.json", "special_tokens_map.json", f"{FAST_FOLDER}/*"]
HUB_OPTIONS = ("revision", "token", "cache_dir", "local_files_only")
SETTINGS = ("variant", "image_keys", "max_token_len", "action_dim", "action_horizon", "robot_action_dim", "norm_mode",
            "discrete_state_input", "conventions")


@dataclass
class PiActionOutput(ModelOutput):
    """
    actions (`torch.FloatTensor` of shape `(batch, horizon, robot action dim)`): in the robot's units.
    valid (`torch.BoolTensor` of shape `(batch,)`): False where a FAST sequence did not decode (its actions are then
        openpi's fallback, the zero chunk in normalised units taken to the robot's) or where the chunk holds a NaN or
        infinite value: not a prediction, do not execute.
    """

    actions: torch.FloatTensor | None = None
    valid: torch.BoolTensor | None = None


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


def _pad(array: np.ndarray, dim: int, name: str) -> np.ndarray:
    if array.shape[-1] > dim:
        raise ValueError(f"{name} has {array.shape[-1]} dims, more than the model's action_dim={dim}.")
    return np.pad(array, [(0, 0)] * (array.ndim - 1) + [(0, dim - array.shape[-1])])


class PiProcessor(ProcessorMixin):
    """Images, prompt, tokenizer, normalisation and post-processing of the π family, reference-exact."""

    def __init__(
        self,
        image_processor: PiImageProcessor,
        tokenizer,
        action_tokenizer: FastActionTokenizer | None = None,
        norm_stats: NormStats | None = None,
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
    ):
        """`action_horizon`: the chunk length FAST ids decode to (default: the FAST tokenizer's). `robot_action_dim`:
        the robot's own action dims, which post-processing keeps (default: the robot's, else the size of the action
        statistics). `discrete_state_input`: whether the prompt carries the state (default: all but π0; π0-FAST
        always does). `robot`: the robot whose raw observations `observation=` takes (module docstring).
        `conventions`: whose pre- and post-processing a policy was trained with, "openpi" or "lerobot" (default:
        the image processor's, "openpi" unless set)."""
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
        self.image_keys = list(image_keys)
        self.max_token_len = max_token_len or DEFAULT_MAX_TOKEN_LEN[variant]
        self.action_dim = int(action_dim)
        self.action_horizon = action_horizon
        self.robot_action_dim = robot_action_dim
        self.norm_mode = norm_mode or DEFAULT_NORM_MODE[variant]
        if self.norm_mode not in MODES:
            raise ValueError(f"norm_mode must be one of {', '.join(MODES)}, got {norm_mode!r}.")
        self.norm_stats = norm_stats
        if norm_stats is not None:  # missing statistics are an error now, not a silent identity later
            for key in ("state", "actions"):
                norm_stats.get(key, self.norm_mode)
        self.discrete_state_input = variant != "pi0" if discrete_state_input is None else bool(discrete_state_input)
        if variant == "pi0_fast" and not self.discrete_state_input:
            raise ValueError("π0-FAST always reads the state in its prompt: discrete_state_input cannot be False.")
        self.robot = Robot.from_dict(robot) if isinstance(robot, dict) else robot
        if self.robot is not None:
            unknown = sorted(set(self.robot.cameras) - set(self.image_keys))
            if unknown:
                raise ValueError(f"The robot's camera(s) {', '.join(unknown)} are not the model's ({', '.join(self.image_keys)}).")

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
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        if batch == 0:
            raise ValueError("Empty batch: no prompt.")
        features = self._images(images, batch)
        state = self._state(state, batch)
        chunks = self._actions(actions, batch)

        fast_ids = [None] * batch
        if chunks is not None and self.variant == "pi0_fast":
            fast_ids = self.action_tokenizer(chunks)
        tokens = [
            tokenize_prompt(self.tokenizer, self.variant, text, self.max_token_len, state[i], fast_ids[i],
                            state_in_prompt=self.discrete_state_input, conventions=self.conventions)
            for i, text in enumerate(prompts)
        ]
        features["input_ids"] = np.array([t.input_ids for t in tokens], dtype=np.int64)
        features["attention_mask"] = np.array([t.attention_mask for t in tokens], dtype=bool)
        if self.variant == "pi0":
            features["state"] = _pad(state, self.action_dim, "state").astype(np.float32)
        if chunks is not None and self.variant == "pi0_fast":
            features["token_type_ids"] = np.array([t.token_type_ids for t in tokens], dtype=np.int64)
            features["labels"] = np.where([t.loss_mask for t in tokens], features["input_ids"], -100)
        elif chunks is not None:
            features["actions"] = _pad(chunks, self.action_dim, "actions").astype(np.float32)
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
            if camera not in images:
                continue
            value = images[camera]
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
        return {"pixel_values": pixel_values, "pixel_attention_mask": present}

    def _state(self, state, batch: int) -> np.ndarray:
        if state is None:
            raise ValueError(f"{self.variant} needs the robot state: pass `state`.")
        state = _batch(state, 2, "state")
        if len(state) != batch:
            raise ValueError(f"state has batch size {len(state)} for {batch} prompts.")
        if self.norm_stats is not None:
            state = self.norm_stats.get("state", self.norm_mode).normalize(state, self.norm_mode, self.conventions)
        return state

    def _actions(self, actions, batch: int) -> np.ndarray | None:
        if actions is None:
            return None
        chunks = _batch(actions, 3, "actions")
        if len(chunks) != batch:
            raise ValueError(f"actions has batch size {len(chunks)} for {batch} prompts.")
        if self.norm_stats is not None:
            chunks = self.norm_stats.get("actions", self.norm_mode).normalize(chunks, self.norm_mode, self.conventions)
        return chunks

    def action_token_ids(self) -> torch.Tensor:
        """π0-FAST: the ids a well-formed answer uses ("Action: ", the FAST range, "|", EOS), for constrained
        decoding (`model.generate_actions(..., allowed_token_ids=processor.action_token_ids())`)."""
        if self.action_tokenizer is None:
            raise ValueError("Only π0-FAST decodes action tokens.")
        fast_range = fast_ids_to_vocab(range(self.action_tokenizer.vocab_size), len(self.tokenizer))
        framing = self.tokenizer.encode("Action: ", add_special_tokens=False) + self.tokenizer.encode("|", add_special_tokens=False)
        return torch.tensor(sorted(set(fast_range + framing + [self.tokenizer.eos_token_id])))

    # ---- outputs -----------------------------------------------------------------------------

    def post_process(self, generated, observation=None, robot_state=None) -> PiActionOutput:
        """Flow output [B, H, D] or FAST ids [B, T] -> actions in robot units [B, H, robot dim] and validity [B].
        With the `observation`(s) the inputs came from, or their states as `self.robot.state` reads them
        (`robot_state` [B, S]), the processor's robot turns the actions into its commands."""
        generated = generated.detach().cpu() if hasattr(generated, "detach") else torch.as_tensor(generated)
        if self.variant == "pi0_fast":
            actions, valid = self._decode_fast(generated.long().tolist())
        else:
            if generated.ndim != 3:
                raise ValueError(f"Expected a normalised action chunk [B, H, D], got shape {tuple(generated.shape)}.")
            actions, valid = generated.double().numpy(), np.ones(len(generated), dtype=bool)
        if self.norm_stats is not None:
            actions = self.norm_stats.get("actions", self.norm_mode).unnormalize(actions, self.norm_mode, self.conventions)
        actions = actions[..., : self._robot_action_dim() or actions.shape[-1]]
        if observation is not None or robot_state is not None:
            actions = self._to_robot(actions, observation, robot_state)
        valid &= np.isfinite(actions).reshape(len(actions), -1).all(axis=1)
        return PiActionOutput(actions=torch.from_numpy(actions).float(), valid=torch.from_numpy(valid))

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
        if self.robot_action_dim:
            return self.robot_action_dim
        if self.robot is not None and self.robot.action_dim:
            return self.robot.action_dim
        if self.norm_stats is not None:
            return self.norm_stats.actions.dim
        return self.action_tokenizer.action_dim if self.action_tokenizer is not None else None

    def _decode_fast(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        horizon = self.action_horizon or self.action_tokenizer.time_horizon
        dim = self._robot_action_dim()
        if not horizon or not dim:
            raise ValueError("Decoding FAST tokens needs the chunk's horizon and action dim: set action_horizon and "
                             "robot_action_dim (or norm_stats).")
        start = self.tokenizer.encode("Action: ", add_special_tokens=False)
        if self.conventions == "lerobot":
            fast_rows, well_formed = zip(*(self._lerobot_fast_ids(row, start) for row in rows))
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
                return fast_ids_to_vocab(body[:stop], len(self.tokenizer))
        return None

    def _lerobot_fast_ids(self, row: list[int], start: list[int]) -> tuple[list[int], bool]:
        """LeRobot's reading of generated ids: everything before the first "|", with every "Action: " taken out,
        mapped back from the vocabulary; well-formed when it began with "Action: "."""
        bar = self.tokenizer.get_vocab().get("|")
        body = row[: row.index(bar)] if bar in row else row
        ids, i = [], 0
        while i < len(body):
            if body[i : i + len(start)] == start:
                i += len(start)
            else:
                ids.append(body[i])
                i += 1
        return fast_ids_to_vocab(ids, len(self.tokenizer)), body[: len(start)] == start

    # ---- saving and loading ------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "processor_class": type(self).__name__,
            "image_processor": self.image_processor.to_dict(),
            "norm_stats": None if self.norm_stats is None else self.norm_stats.to_dict(),
            **{name: getattr(self, name) for name in SETTINGS},
            "robot": None if self.robot is None else self.robot.to_dict(),
        }

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """Tokenizer files, `processor_config.json` (settings, image processor, norm stats) and the FAST tokenizer."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        (folder / PROCESSOR_CONFIG).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        if self.action_tokenizer is not None:
            self.action_tokenizer.save_pretrained(folder / FAST_FOLDER)
        return [str(folder / PROCESSOR_CONFIG)]

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **kwargs) -> "PiProcessor":
        """A local folder, or a Hub repo (only the processor's files are downloaded). Hub options
        (`revision`, `token`, `cache_dir`, `local_files_only`) are honoured; the Auto classes' other
        options (`trust_remote_code`, ...) do not apply: nothing here runs code from the folder."""
        folder = Path(path_or_repo)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            hub_kwargs = {key: kwargs[key] for key in HUB_OPTIONS if kwargs.get(key) is not None}
            folder = Path(snapshot_download(str(path_or_repo), allow_patterns=PROCESSOR_FILES, **hub_kwargs))
        if not (folder / PROCESSOR_CONFIG).is_file():
            raise ValueError(f"{path_or_repo} has no {PROCESSOR_CONFIG}: not a saved PiProcessor.")
        config = json.loads((folder / PROCESSOR_CONFIG).read_text())
        image_config = {k: v for k, v in config["image_processor"].items() if k != "image_processor_type"}
        fast_folder = folder / FAST_FOLDER
        return cls(
            PiImageProcessor(**image_config),
            PreTrainedTokenizerFast.from_pretrained(folder),
            action_tokenizer=FastActionTokenizer.from_pretrained(fast_folder) if fast_folder.is_dir() else None,
            norm_stats=NormStats.from_dict(config["norm_stats"]) if config.get("norm_stats") else None,
            robot=config.get("robot"),
            **{name: config[name] for name in SETTINGS if name in config},
        )

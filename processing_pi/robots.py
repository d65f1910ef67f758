"""Robots: the observation a robot client sends -> the processor's images, prompt and state; the model's
actions -> the commands that robot executes.

A robot policy is more than a model: it reads the robot's own keys and units and answers in them. `Robot`
holds what openpi's policy configs say about that, as data that a processor saves in its config:

- `cameras`: model camera -> observation key, looked up as given and then as a path through nested dicts
  (`"images/cam_high"`); `None` for a camera the robot lacks, which the model gets as a black image,
  masked out unless `show_blank_cameras` (openpi trains π0-FAST with its black padding images visible).
  Cameras named in `optional_cameras` may be missing from an observation: they are then black and masked.
  `other_images` (ALOHA's `images/cam_low`): the images a robot sends beside its cameras, in the dicts that
  hold them. Given, any other image there (an array of 3 dims) is refused, since a misnamed optional camera
  would be read as missing; left `None`, those dicts are not checked.
  `image_layout` "chw" reads channel-first images (ALOHA's); "auto" takes either.
- `state_keys`: the observation keys whose values, concatenated, are the state (`state_dim` long).
- `adapt_to_pi` (ALOHA's 14 dims: two arms of 6 joints and a gripper): joints 1, 2, 8 and 9 change sign,
  and the grippers (6, 13) go from ALOHA's linear positions to the angular space the π models were
  trained in; actions come back the other way.
- `delta_action_mask`: the leading action dims that the model predicts relative to the state (after the
  conversion above); the state is added back to make them absolute.
- `action_dim`: the robot's action dims, the first ones of the model's output.
- `prompt_key`, `default_prompt` (used when an observation carries none), and `metadata` (what the
  policy server tells clients on connect, e.g. ALOHA's `reset_pose`).

Data flows as in openpi: observation -> `read` (state adapted) -> normalise -> model -> un-normalise ->
`to_robot` (absolute, then adapted back). Written by hand: these are openpi's robot conventions, which no
library carries. The ALOHA constants are the gripper limits of the ALOHA and Interbotix code as openpi
states them.
"""

from dataclasses import asdict, dataclass, field, fields

import numpy as np

# ALOHA <-> π runtime
_ALOHA_JOINT_SIGNS = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1], dtype=np.float64)
_ALOHA_GRIPPERS = [6, 13]
_ALOHA_GRIPPER_LINEAR = (0.01844, 0.05800)  # the puppet gripper's closed and open positions, metres
_ALOHA_GRIPPER_JOINT = (-0.6213, 1.4910)  # the puppet gripper joint's limits, radians
_PI_GRIPPER_ANGLE = (0.5476, 1.6296)  # the π runtime's gripper range, radians
_GRIPPER_ARM, _GRIPPER_HORN = 0.036, 0.022  # the gripper linkage, metres


class ObservationError(ValueError):
    """An observation the robot layout cannot read; the message names the key."""


def _to_unit(x, low, high):
    return (x - low) / (high - low)


def _from_unit(x, low, high):
    return x * (high - low) + low


def _gripper_to_pi(position: np.ndarray) -> np.ndarray:
    """ALOHA's normalised linear gripper position -> the π runtime's normalised gripper angle."""
    linear = _from_unit(position, *_ALOHA_GRIPPER_LINEAR)
    sine = (_GRIPPER_HORN**2 + linear**2 - _GRIPPER_ARM**2) / (2 * _GRIPPER_HORN * linear)  # of the horn's angle
    return _to_unit(np.arcsin(np.clip(sine, -1.0, 1.0)), *_PI_GRIPPER_ANGLE)


def _gripper_from_pi(angle: np.ndarray) -> np.ndarray:
    """The π runtime's gripper command -> ALOHA's normalised gripper joint."""
    return _to_unit(angle + _PI_GRIPPER_ANGLE[0], *_ALOHA_GRIPPER_JOINT)


def _gripper_to_pi_command(joint: np.ndarray) -> np.ndarray:
    """The inverse of `_gripper_from_pi`, for training targets."""
    return _from_unit(joint, *_ALOHA_GRIPPER_JOINT) - _PI_GRIPPER_ANGLE[0]


def _lookup(observation: dict, key: str):
    if key in observation:
        return observation[key]
    value = observation
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def read_image(value, key: str, layout: str = "auto") -> np.ndarray:
    """A uint8 (or float in [0, 1]) image, HWC or CHW -> HWC; "chw" insists on channel-first."""
    image = np.asarray(value)
    if image.dtype.kind not in "uf" or (image.dtype.kind == "u" and image.dtype != np.uint8):
        raise ObservationError(f"Image {key!r} must be uint8 (or float in [0, 1]), got {image.dtype}.")
    expected = "[3, H, W]" if layout == "chw" else "[H, W, 3] or [3, H, W]"
    channels_first = image.ndim == 3 and image.shape[0] == 3 and (layout == "chw" or image.shape[-1] != 3)
    if image.ndim != 3 or image.size == 0 or not (channels_first or (layout != "chw" and image.shape[-1] == 3)):
        raise ObservationError(f"Image {key!r} must be {expected}, got {list(image.shape)}.")
    if channels_first:
        image = image.transpose(1, 2, 0)
    if image.dtype.kind == "f" and not (np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0):
        raise ObservationError(f"Float image {key!r} must hold values in [0, 1].")
    return image


@dataclass
class Robot:
    """How one robot's observations and actions map onto a π model's (module docstring)."""

    cameras: dict[str, str | None]
    state_keys: list[str]
    state_dim: int | None = None
    action_dim: int | None = None
    optional_cameras: list[str] = field(default_factory=list)
    other_images: list[str] | None = None
    show_blank_cameras: bool = False
    image_layout: str = "auto"
    adapt_to_pi: bool = False
    delta_action_mask: list[bool] | None = None
    prompt_key: str = "prompt"
    default_prompt: str | None = None
    metadata: dict = field(default_factory=dict)
    name: str = "custom"

    def __post_init__(self):
        self.cameras, self.state_keys = dict(self.cameras), list(self.state_keys)
        if not any(key is not None for key in self.cameras.values()):
            raise ValueError("A robot needs at least one camera read from its observations.")
        if not self.state_keys:
            raise ValueError("A robot needs the observation keys of its state (state_keys).")
        for name in ("state_dim", "action_dim"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}.")
            setattr(self, name, None if value is None else int(value))
        if self.other_images is not None:
            self.other_images = list(self.other_images)
            if not all(isinstance(key, str) and "/" in key for key in self.other_images):
                raise ValueError(f"other_images are keys inside the dict of the robot's images (\"images/cam_low\"), "
                                 f"got {self.other_images!r}.")
        unknown = sorted(set(self.optional_cameras) - set(self.cameras))
        if unknown:
            raise ValueError(f"optional_cameras {unknown} are not among the robot's cameras {list(self.cameras)}.")
        if self.image_layout not in ("auto", "chw"):
            raise ValueError(f"image_layout must be 'auto' or 'chw', got {self.image_layout!r}.")
        for name in ("state_dim", "action_dim"):
            if self.adapt_to_pi and getattr(self, name) not in (None, len(_ALOHA_JOINT_SIGNS)):
                raise ValueError(f"adapt_to_pi converts ALOHA's {len(_ALOHA_JOINT_SIGNS)} dims; this robot's {name} is "
                                 f"{getattr(self, name)}.")
        if self.delta_action_mask is not None:
            self.delta_action_mask = [bool(flag) for flag in self.delta_action_mask]
            for name in ("state_dim", "action_dim"):
                if getattr(self, name) is not None and len(self.delta_action_mask) > getattr(self, name):
                    raise ValueError(f"delta_action_mask has {len(self.delta_action_mask)} dims, more than {name}.")

    @classmethod
    def from_dict(cls, data: dict) -> "Robot":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"Unknown robot field(s) {', '.join(unknown)}; expected some of {', '.join(f.name for f in fields(cls))}.")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    # ---- observation -> processor inputs -----------------------------------------------------

    def read(self, observation) -> dict:
        """observation -> {"images": {camera: HWC array, or None for a masked black image}, "prompt": str,
        "state": float64 [S], the state as the model's statistics describe it (adapted for ALOHA)}."""
        if not isinstance(observation, dict):
            raise ObservationError(f"An observation is a dict (msgpack map), got {type(observation).__name__}.")
        return {"images": self._images(observation), "prompt": self._prompt(observation), "state": self.state(observation)}

    def _images(self, observation: dict) -> dict:
        if self.other_images is not None:
            self._check_image_dicts(observation)
        images = {}
        for camera, key in self.cameras.items():
            value = None if key is None else _lookup(observation, key)
            if value is None and key is not None and camera not in self.optional_cameras:
                raise ObservationError(f"Missing image {key!r} (the model's {camera} camera).")
            images[camera] = None if value is None else read_image(value, key, self.image_layout)
        shape = next((image.shape for image in images.values() if image is not None), None)
        if shape is None:
            raise ObservationError(f"The observation has none of the robot's images ({', '.join(filter(None, self.cameras.values()))}).")
        for camera, key in self.cameras.items():
            if key is None and self.show_blank_cameras:
                images[camera] = np.zeros(shape, dtype=np.uint8)
        return images

    def _check_image_dicts(self, observation: dict) -> None:
        """Refuses an image (an array of 3 dims), in a dict holding the robot's cameras, that is neither one of them
        nor in `other_images`; the state, the prompt and other values may sit beside them."""
        known = {key for key in self.cameras.values() if key} | set(self.other_images)
        for parent in sorted({key.rpartition("/")[0] for key in known if "/" in key}):
            holder = _lookup(observation, parent)
            unknown = sorted(f"{parent}/{name}" for name, value in holder.items()
                             if f"{parent}/{name}" not in known and np.ndim(value) == 3) if isinstance(holder, dict) else []
            if unknown:
                expected = sorted(key for key in known if key.startswith(f"{parent}/"))
                raise ObservationError(f"Unknown image(s) {', '.join(map(repr, unknown))}; the robot reads "
                                       f"{', '.join(map(repr, expected))} there: a misnamed camera would be left out.")

    def _prompt(self, observation: dict) -> str:
        prompt = _lookup(observation, self.prompt_key)
        if prompt is None:
            if self.default_prompt is None:
                raise ObservationError(f"Missing {self.prompt_key!r}, and the robot has no default prompt.")
            return self.default_prompt
        if isinstance(prompt, np.ndarray) and prompt.dtype.kind in "SU" and prompt.size == 1:
            prompt = prompt.item()  # str, or bytes for a numpy bytes array
        if isinstance(prompt, bytes):
            prompt = prompt.decode("utf-8", errors="replace")
        if not isinstance(prompt, str):
            raise ObservationError(f"{self.prompt_key!r} must be a string, got {type(prompt).__name__}.")
        return prompt

    def state(self, observation: dict) -> np.ndarray:
        """The observation's state [S] float64, adapted to the π runtime for ALOHA."""
        parts = []
        for key in self.state_keys:
            value = _lookup(observation, key)
            if value is None:
                raise ObservationError(f"Missing state {key!r}.")
            array = np.asarray(value)
            if array.dtype.kind not in "biuf" or array.ndim > 1:
                raise ObservationError(f"{key!r} must be a number or a 1-D numeric array, got {array.dtype} {list(array.shape)}.")
            parts.append(array.astype(np.float64).reshape(-1))
        state = np.concatenate(parts)
        dim = len(_ALOHA_JOINT_SIGNS) if self.adapt_to_pi else self.state_dim
        if dim is not None and len(state) != dim:
            what = "ALOHA's conversion (adapt_to_pi) takes" if self.state_dim is None else "the robot has"
            raise ObservationError(f"The state ({', '.join(self.state_keys)}) has {len(state)} values; {what} {dim}.")
        if not np.isfinite(state).all():
            raise ObservationError(f"The state ({', '.join(self.state_keys)}) holds NaN or infinity.")
        if self.adapt_to_pi:
            state = _ALOHA_JOINT_SIGNS * state
            state[_ALOHA_GRIPPERS] = _gripper_to_pi(state[_ALOHA_GRIPPERS])
        return state

    # ---- actions -----------------------------------------------------------------------------

    def to_robot(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Un-normalised model actions [B, H, D >= action_dim] and `state` [B, S] (from `state`) -> the robot's
        commands [B, H, action_dim]."""
        actions = np.array(actions, dtype=np.float64)
        if actions.ndim == 3 and self.action_dim is not None and actions.shape[-1] < self.action_dim:
            raise ValueError(f"The actions have {actions.shape[-1]} dims; the robot has {self.action_dim} (action_dim).")
        actions = actions[..., : self.action_dim or actions.shape[-1]]
        self._check_chunk(actions, state)
        if self.delta_action_mask is not None:
            dims = len(self.delta_action_mask)
            actions[..., :dims] += np.where(self.delta_action_mask, state[:, :dims], 0.0)[:, None]
        if self.adapt_to_pi:
            actions = _ALOHA_JOINT_SIGNS * actions
            actions[..., _ALOHA_GRIPPERS] = _gripper_from_pi(actions[..., _ALOHA_GRIPPERS])
        return actions

    def from_robot(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """The inverse of `to_robot`: a chunk of the robot's commands [B, H, A] -> the model's training targets
        (before normalisation)."""
        actions = np.array(actions, dtype=np.float64)
        self._check_chunk(actions, state)
        if self.adapt_to_pi:
            actions = _ALOHA_JOINT_SIGNS * actions
            actions[..., _ALOHA_GRIPPERS] = _gripper_to_pi_command(actions[..., _ALOHA_GRIPPERS])
        if self.delta_action_mask is not None:
            dims = len(self.delta_action_mask)
            actions[..., :dims] -= np.where(self.delta_action_mask, state[:, :dims], 0.0)[:, None]
        return actions

    def _check_chunk(self, actions: np.ndarray, state) -> None:
        """Refuse, naming the shapes, a chunk and state the conversions above cannot pair up."""
        state = np.asarray(state)
        if actions.ndim != 3 or state.ndim != 2:
            raise ValueError(f"Expected actions [B, H, D] and state [B, S], got shapes {list(actions.shape)} and {list(state.shape)}.")
        if len(actions) != len(state):
            raise ValueError(f"{len(actions)} action chunk(s) for {len(state)} state(s).")
        if self.adapt_to_pi and actions.shape[-1] != len(_ALOHA_JOINT_SIGNS):
            raise ValueError(f"adapt_to_pi converts ALOHA's {len(_ALOHA_JOINT_SIGNS)} action dims, got {actions.shape[-1]}.")
        if self.delta_action_mask is not None:
            dims = len(self.delta_action_mask)
            for name, width in (("actions", actions.shape[-1]), ("state", state.shape[-1])):
                if width < dims:
                    raise ValueError(f"{name} of {width} dims are narrower than delta_action_mask ({dims} dims).")

    def describe(self) -> dict:
        """What a policy server tells clients on connect about the observations it reads."""
        return {"cameras": dict(self.cameras), "state_keys": list(self.state_keys), "prompt_key": self.prompt_key,
                "default_prompt": self.default_prompt}

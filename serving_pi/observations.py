"""From a robot's observation dict, as openpi clients send it, to the processor's images, prompt and state.

Robots name things their own way: openpi's ALOHA client sends `{"images": {"cam_high": CHW uint8, ...},
"state": [14], "prompt"}`, DROID `{"observation/exterior_image_1_left": HWC uint8, ...,
"observation/joint_position": [7], "observation/gripper_position": [1], "prompt"}`, LIBERO
`{"observation/image", "observation/wrist_image", "observation/state": [8], "prompt"}`. An
`ObservationLayout` says which key feeds which model camera, which keys are concatenated into the
state, where the prompt is and what prompt to use when there is none. A key is looked up as given
and then as a path through nested dicts ("images/cam_high"). The presets only rename: robot-specific
state conversions (openpi's ALOHA joint flips and gripper transforms) are the training data's
business and are not applied here.
"""

from dataclasses import dataclass

import numpy as np

PRESETS = {
    "pi": {  # the model's own camera names at the top level
        "cameras": {"base_0_rgb": "base_0_rgb", "left_wrist_0_rgb": "left_wrist_0_rgb", "right_wrist_0_rgb": "right_wrist_0_rgb"},
        "state_keys": ["state"],
    },
    "aloha": {
        "cameras": {"base_0_rgb": "images/cam_high", "left_wrist_0_rgb": "images/cam_left_wrist",
                    "right_wrist_0_rgb": "images/cam_right_wrist"},
        "state_keys": ["state"],
    },
    "droid": {
        "cameras": {"base_0_rgb": "observation/exterior_image_1_left", "left_wrist_0_rgb": "observation/wrist_image_left"},
        "state_keys": ["observation/joint_position", "observation/gripper_position"],
    },
    "libero": {
        "cameras": {"base_0_rgb": "observation/image", "left_wrist_0_rgb": "observation/wrist_image"},
        "state_keys": ["observation/state"],
    },
}


class ObservationError(ValueError):
    """An observation the layout cannot read; the message names the key."""


@dataclass
class ObservationLayout:
    """Model camera -> observation key; the keys whose values, concatenated, are the state; the prompt."""

    cameras: dict[str, str]
    state_keys: list[str]
    prompt_key: str = "prompt"
    default_prompt: str | None = None

    @classmethod
    def preset(cls, name: str, **overrides) -> "ObservationLayout":
        if name not in PRESETS:
            raise ValueError(f"Unknown observation preset {name!r}; expected one of {', '.join(PRESETS)}.")
        return cls(**{**PRESETS[name], **{key: value for key, value in overrides.items() if value is not None}})

    def describe(self) -> dict:
        """What the server tells clients on connect."""
        return {"cameras": dict(self.cameras), "state_keys": list(self.state_keys), "prompt_key": self.prompt_key,
                "default_prompt": self.default_prompt}

    def read(self, observation) -> dict:
        """observation -> {"images": {camera: HWC array}, "prompt": str, "state": float array [S]}."""
        if not isinstance(observation, dict):
            raise ObservationError(f"An observation is a dict (msgpack map), got {type(observation).__name__}.")
        images = {}
        for camera, key in self.cameras.items():
            value = _lookup(observation, key)
            if value is None:
                raise ObservationError(f"Missing image {key!r} (the model's {camera} camera).")
            images[camera] = _image(value, key)
        return {"images": images, "prompt": self._prompt(observation), "state": self._state(observation)}

    def _prompt(self, observation: dict) -> str:
        prompt = _lookup(observation, self.prompt_key)
        if prompt is None:
            if self.default_prompt is None:
                raise ObservationError(f"Missing {self.prompt_key!r}, and the server has no default prompt.")
            return self.default_prompt
        if isinstance(prompt, bytes):
            prompt = prompt.decode("utf-8", errors="replace")
        if isinstance(prompt, np.ndarray) and prompt.dtype.kind in "SU" and prompt.size == 1:
            prompt = str(prompt.item())
        if not isinstance(prompt, str):
            raise ObservationError(f"{self.prompt_key!r} must be a string, got {type(prompt).__name__}.")
        return prompt

    def _state(self, observation: dict) -> np.ndarray:
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
        if not np.isfinite(state).all():
            raise ObservationError(f"The state ({', '.join(self.state_keys)}) holds NaN or infinity.")
        return state


def _lookup(observation: dict, key: str):
    if key in observation:
        return observation[key]
    value = observation
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _image(value, key: str) -> np.ndarray:
    """A uint8 (or float in [0, 1]) image, HWC or CHW -> HWC."""
    image = np.asarray(value)
    if image.dtype.kind not in "uf" or (image.dtype.kind == "u" and image.dtype != np.uint8):
        raise ObservationError(f"Image {key!r} must be uint8 (or float in [0, 1]), got {image.dtype}.")
    if image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]) or image.size == 0:
        raise ObservationError(f"Image {key!r} must be [H, W, 3] or [3, H, W], got {list(image.shape)}.")
    if image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.dtype.kind == "f" and not (np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0):
        raise ObservationError(f"Float image {key!r} must hold values in [0, 1].")
    return image

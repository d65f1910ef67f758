"""Observation layouts of common robot clients, for models whose processor does not know its robot.

A folder converted with `--config` or `--robot` carries its robot (`processing_pi.Robot`: cameras, state keys,
conversions, delta actions) and needs none of this. For other folders, a preset names which observation key
feeds which model camera and which keys make the state, as openpi's clients send them: ALOHA
`{"images": {"cam_high": CHW uint8, ...}, "state": [14], "prompt"}`, DROID
`{"observation/exterior_image_1_left": HWC uint8, ..., "observation/joint_position": [7],
"observation/gripper_position": [1], "prompt"}`, LIBERO `{"observation/image", "observation/wrist_image",
"observation/state": [8], "prompt"}`. A preset only renames: the robot conversions of openpi's policies
(ALOHA's joint flips and gripper space, delta actions) come with `--config`.
"""

from processing_pi import Robot

PRESETS = {
    "pi": {  # the model's own camera names at the top level (a converted openpi model's; `pi serve` takes the folder's)
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


def preset(name: str, **overrides) -> Robot:
    """The named layout as a `Robot` that only renames; `overrides` (cameras, state_keys, prompt_key,
    default_prompt) replace its fields where not None."""
    if name not in PRESETS:
        raise ValueError(f"Unknown observation preset {name!r}; expected one of {', '.join(PRESETS)}.")
    return Robot(name=name, **{**PRESETS[name], **{key: value for key, value in overrides.items() if value is not None}})

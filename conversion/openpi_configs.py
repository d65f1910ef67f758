"""openpi's named policy configs, as data: what a released checkpoint needs beyond its weights.

An openpi checkpoint is trained and served under a config (`pi0_aloha`, `pi05_droid`, ...) that fixes the
variant, the action horizon, the prompt length, whether π0.5 reads the state in its prompt, which
`assets/<asset_id>/norm_stats.json` holds its statistics, and the robot: camera layout, state keys, ALOHA's
conversion, delta actions, action dims, default prompt, server metadata. `OPENPI_CONFIGS` holds those facts
for openpi's inference and fine-tuning configs (its `training/config.py` and PolaRiS configs), LoRA fine-tunes
(`*_low_mem_finetune`) included, except those that need what the π models here lack: the binning and FSQ action
tokenizers, RoboArena's baselines (openpi at this commit cannot build their data configs either) and the debug
models. `pi convert openpi --config NAME` records them in the
converted folder, and a user's own robot declares the same in a JSON file (`PolicyConfig.from_json`,
`--robot robot.json`):

    {"action_horizon": 10, "asset_id": "my_arm",
     "robot": {"cameras": {"base_0_rgb": "observation/image", "left_wrist_0_rgb": "observation/wrist_image",
                           "right_wrist_0_rgb": null},
               "state_keys": ["observation/state"], "state_dim": 8, "action_dim": 7,
               "delta_action_mask": [true, true, true, true, true, true, false], "default_prompt": "stack the cups"}}

Every field but `robot` may be left out: the variant is then the checkpoint's, the rest the variant's defaults.
"""

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from processing_pi import Robot

ALOHA_RESET_POSE = {"reset_pose": [0, -1.5, 1.5, 0, 0, 0]}


@dataclass(frozen=True)
class PolicyConfig:
    """A robot policy's facts beyond its weights (module docstring); None: the checkpoint's or the variant's."""

    robot: Robot
    variant: str | None = None
    action_horizon: int | None = None
    max_token_len: int | None = None
    discrete_state_input: bool | None = None
    asset_id: str | None = None

    @classmethod
    def from_dict(cls, data: dict, source: str = "the policy config") -> "PolicyConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}.")
        if not isinstance(data.get("robot"), dict):
            raise ValueError(f"{source}: needs a 'robot' object (cameras, state_keys, ...).")
        for name in ("action_horizon", "max_token_len"):  # otherwise blamed on the checkpoint's shapes
            value = data.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{source}: {name} must be a whole number of at least 1, got {value!r}.")
        try:
            return cls(**{**data, "robot": Robot.from_dict(data["robot"])})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from err

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "PolicyConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"Cannot read the robot file {path}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object.")
        return cls.from_dict(data, str(path))


def _aloha(delta: bool = True, default_prompt: str | None = None, metadata: dict | None = None) -> Robot:
    """openpi's ALOHA: channel-first images under `images/cam_*` (`cam_low` unused, wrists optional), 14 dims
    converted to the π runtime's space, joints as deltas of the state."""
    return Robot(
        cameras={"base_0_rgb": "images/cam_high", "left_wrist_0_rgb": "images/cam_left_wrist",
                 "right_wrist_0_rgb": "images/cam_right_wrist"},
        optional_cameras=["left_wrist_0_rgb", "right_wrist_0_rgb"],
        other_images=["images/cam_low"],
        image_layout="chw",
        state_keys=["state"],
        state_dim=14,
        action_dim=14,
        adapt_to_pi=True,
        delta_action_mask=[True] * 6 + [False] + [True] * 6 + [False] if delta else None,
        default_prompt=default_prompt,
        metadata=metadata or {},
    )


def _droid(variant: str, delta: bool = False) -> Robot:
    """openpi's DROID: exterior and wrist cameras, 7 joints then the gripper. π0-FAST's slots differ: a visible
    black image between the two cameras."""
    exterior, wrist = "observation/exterior_image_1_left", "observation/wrist_image_left"
    if variant == "pi0_fast":
        cameras = {"base_0_rgb": exterior, "base_1_rgb": None, "wrist_0_rgb": wrist}
    else:
        cameras = {"base_0_rgb": exterior, "left_wrist_0_rgb": wrist, "right_wrist_0_rgb": None}
    return Robot(
        cameras=cameras,
        show_blank_cameras=variant == "pi0_fast",
        state_keys=["observation/joint_position", "observation/gripper_position"],
        state_dim=8,
        action_dim=8,
        delta_action_mask=[True] * 7 + [False] if delta else None,
    )


def _libero(variant: str, delta: bool) -> Robot:
    """openpi's LIBERO: agent-view and wrist cameras, 8 state dims, 7 action dims (the older π0 checkpoints
    predict the 6 pose dims relative to the state)."""
    return Robot(
        cameras={"base_0_rgb": "observation/image", "left_wrist_0_rgb": "observation/wrist_image", "right_wrist_0_rgb": None},
        show_blank_cameras=variant == "pi0_fast",
        state_keys=["observation/state"],
        state_dim=8,
        action_dim=7,
        delta_action_mask=[True] * 6 + [False] if delta else None,
    )


def _configs() -> dict[str, PolicyConfig]:
    trossen, droid, libero = "trossen", "droid", "physical-intelligence/libero"
    aloha = {
        "pi0_aloha": ("pi0", _aloha(metadata=ALOHA_RESET_POSE)),
        "pi05_aloha": ("pi05", _aloha(metadata=ALOHA_RESET_POSE)),
        "pi0_aloha_towel": ("pi0", _aloha(default_prompt="fold the towel", metadata=ALOHA_RESET_POSE)),
        "pi0_aloha_tupperware": ("pi0", _aloha(default_prompt="open the tupperware and put the food on the plate",
                                               metadata=ALOHA_RESET_POSE)),
        "pi0_aloha_pen_uncap": ("pi0", _aloha(default_prompt="uncap the pen")),
        "pi05_aloha_pen_uncap": ("pi05", _aloha(default_prompt="uncap the pen")),
    }
    configs = {name: PolicyConfig(variant=variant, robot=robot, asset_id=trossen) for name, (variant, robot) in aloha.items()}
    configs.update({
        # openpi reads this one's statistics under the dataset's name
        "pi0_aloha_sim": PolicyConfig(variant="pi0", robot=_aloha(delta=False, default_prompt="Transfer cube"),
                                      asset_id="lerobot/aloha_sim_transfer_cube_human"),
        "pi0_droid": PolicyConfig(variant="pi0", robot=_droid("pi0"), action_horizon=10, asset_id=droid),
        "pi0_fast_droid": PolicyConfig(variant="pi0_fast", robot=_droid("pi0_fast"), action_horizon=10, asset_id=droid),
        "pi05_droid": PolicyConfig(variant="pi05", robot=_droid("pi05"), action_horizon=15, asset_id=droid),
        "pi0_libero": PolicyConfig(variant="pi0", robot=_libero("pi0", delta=True), asset_id=libero),
        "pi0_fast_libero": PolicyConfig(variant="pi0_fast", robot=_libero("pi0_fast", delta=True), action_horizon=10,
                                        max_token_len=180, asset_id=libero),
        # LoRA fine-tunes: the same policies (their adapters are merged at conversion)
        "pi0_libero_low_mem_finetune": PolicyConfig(variant="pi0", robot=_libero("pi0", delta=True), asset_id=libero),
        "pi0_fast_libero_low_mem_finetune": PolicyConfig(variant="pi0_fast", robot=_libero("pi0_fast", delta=True),
                                                         action_horizon=10, max_token_len=180, asset_id=libero),
        "pi05_libero": PolicyConfig(variant="pi05", robot=_libero("pi05", delta=False), action_horizon=10,
                                    discrete_state_input=False, asset_id=libero),
        # trained on DROID's absolute joint positions, made deltas of the state (the gripper stays absolute)
        "pi0_fast_full_droid_finetune": PolicyConfig(variant="pi0_fast", robot=_droid("pi0_fast", delta=True),
                                                     action_horizon=16, max_token_len=180, asset_id=droid),
        "pi05_full_droid_finetune": PolicyConfig(variant="pi05", robot=_droid("pi05", delta=True), action_horizon=16,
                                                 asset_id=droid),
        "pi05_droid_finetune": PolicyConfig(variant="pi05", robot=_droid("pi05"), action_horizon=16, asset_id=droid),
        # PolaRiS (training/misc/polaris_config.py): DROID's absolute joint positions, as deltas of the state
        "pi05_droid_jointpos_polaris": PolicyConfig(variant="pi05", robot=_droid("pi05", delta=True), action_horizon=15,
                                                    asset_id=droid),
        "pi0_fast_droid_jointpos_polaris": PolicyConfig(variant="pi0_fast", robot=_droid("pi0_fast", delta=True),
                                                        action_horizon=10, max_token_len=180, asset_id=droid),
        **{name: PolicyConfig(variant="pi0", robot=_droid("pi0", delta=True), action_horizon=10, max_token_len=100,
                              asset_id=droid)
           for name in ("pi0_droid_jointpos_polaris", "pi0_droid_jointpos_100k_polaris")},
    })
    return {name: replace(config, robot=replace(config.robot, name=name)) for name, config in configs.items()}


OPENPI_CONFIGS: dict[str, PolicyConfig] = _configs()


def openpi_config(name: str) -> PolicyConfig:
    if name not in OPENPI_CONFIGS:
        raise ValueError(f"Unknown openpi config {name!r}; known: {', '.join(OPENPI_CONFIGS)}.")
    return OPENPI_CONFIGS[name]

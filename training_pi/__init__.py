"""Fine-tuning π models with the Hugging Face stack: LeRobot v3 data, Trainer, PEFT LoRA, `pi train`."""

from .lerobot_dataset import (DatasetError, LeRobotDataset, PiCollator, compute_norm_stats, dataset_norm_stats,
                              write_norm_stats)
from .lora import LORA_PRESETS, apply_lora, lora_config, set_full_finetuning

__all__ = [
    "LORA_PRESETS",
    "DatasetError",
    "LeRobotDataset",
    "PiCollator",
    "apply_lora",
    "compute_norm_stats",
    "dataset_norm_stats",
    "lora_config",
    "set_full_finetuning",
    "write_norm_stats",
]

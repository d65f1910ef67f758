"""Pipelines of the π family. Importing this package registers the "robotics" task with transformers'
`pipeline` (importing `modeling_pi` does so too)."""

from .robotics import OBSERVATION_FIELDS, TASK, RoboticsPipeline

__all__ = ["OBSERVATION_FIELDS", "TASK", "RoboticsPipeline"]

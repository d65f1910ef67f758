"""Normalisation statistics of a robot's state and actions, in openpi's and LeRobot's file formats.

Two modes, as the reference uses them: z-score (π0) `(x − mean) / (std + 1e-6)` and quantile (π0.5,
π0-FAST) `(x − q01) / (q99 − q01 + 1e-6) · 2 − 1`. Statistics cover the robot's own dims; a model's
output is wider (zero-padded to its action dim): un-normalising pads the z-score statistics with
mean 0 / std 1 and passes the extra dims through in quantile mode.

LeRobot's normaliser (`conventions="lerobot"`) places its epsilon (1e-8) elsewhere: z-score divides by
`std + 1e-8` and multiplies back by `std` alone; quantile divides by `q99 − q01`, replaced by 1e-8 only
where it is zero.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODES = ("zscore", "quantile")
NEEDED_STATS = {"zscore": ("mean", "std"), "quantile": ("q01", "q99")}  # what each mode reads
CONVENTIONS = ("openpi", "lerobot")
EPS = 1e-6
LEROBOT_EPS = 1e-8
# LeRobot's feature names -> ours
LEROBOT_KEYS = {"observation.state": "state", "action": "actions"}


def non_finite(value: float) -> str:
    """A value that is not finite, as errors name it."""
    return "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")


@dataclass
class ArrayStats:
    """Per-dim statistics of one array (state or actions); quantiles may be absent."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    def __post_init__(self):
        """One finite value per dim in each statistic given: a NaN, or statistics of different lengths, would
        surface only later, as NaN actions or a broadcasting error at the first state."""
        given = {name: value for name, value in vars(self).items() if value is not None}
        lengths = {name: len(value) for name, value in given.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"the statistics disagree on the dims ({', '.join(f'{n} has {k}' for n, k in lengths.items())} "
                             "values): each needs one value per dim.")
        for name, value in given.items():
            bad = np.flatnonzero(~np.isfinite(value))
            if bad.size:
                raise ValueError(f"{name} is {non_finite(value[bad[0]])} in dim {int(bad[0])}; normalising with it would give the "
                                 "model NaN inputs, or the robot NaN actions.")

    @classmethod
    def from_dict(cls, stats: dict) -> "ArrayStats":
        def get(name):
            return None if stats.get(name) is None else np.asarray(stats[name], dtype=np.float64).reshape(-1)

        return cls(mean=get("mean"), std=get("std"), q01=get("q01"), q99=get("q99"))

    def to_dict(self) -> dict:
        return {name: getattr(self, name).tolist() for name in ("mean", "std", "q01", "q99") if getattr(self, name) is not None}

    @property
    def dim(self) -> int:
        return len(self.mean if self.mean is not None else self.q01)

    def require(self, mode: str, key: str) -> None:
        missing = [name for name in NEEDED_STATS[mode] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{mode} normalisation of {key} needs {', '.join(missing)}, which the statistics lack.")

    def _spread(self, conventions: str) -> np.ndarray:
        """The quantile range the conventions divide by."""
        spread = self.q99 - self.q01
        return spread + EPS if conventions == "openpi" else np.where(spread == 0, LEROBOT_EPS, spread)

    def normalize(self, x: np.ndarray, mode: str, conventions: str = "openpi", name: str = "The input") -> np.ndarray:
        """x [..., dim] (the robot's dims) -> normalised, same shape; `name` says what x is in an error."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"{name} has {x.shape[-1]} dims; the normalisation statistics have {self.dim}.")
        if mode == "zscore":
            return (x - self.mean) / (self.std + (EPS if conventions == "openpi" else LEROBOT_EPS))
        return (x - self.q01) / self._spread(conventions) * 2.0 - 1.0

    def unnormalize(self, x: np.ndarray, mode: str, conventions: str = "openpi") -> np.ndarray:
        """x [..., D >= dim] (model output) -> robot units, same shape; dims past the statistics as the reference treats them."""
        extra = x.shape[-1] - self.dim
        if extra < 0:
            raise ValueError(f"Expected at least {self.dim} dims, got {x.shape[-1]}.")
        if mode == "zscore":
            mean, std = np.pad(self.mean, (0, extra)), np.pad(self.std, (0, extra), constant_values=1.0)
            return x * (std + (EPS if conventions == "openpi" else 0.0)) + mean
        head = (x[..., : self.dim] + 1.0) / 2.0 * self._spread(conventions) + self.q01
        return np.concatenate([head, x[..., self.dim :]], axis=-1)


@dataclass
class NormStats:
    """Statistics for `state` and `actions` (either may be absent)."""

    state: ArrayStats | None = None
    actions: ArrayStats | None = None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "NormStats":
        """openpi's `norm_stats.json` (`{"norm_stats": {"state": ..., "actions": ...}}`) or LeRobot's `meta/stats.json`."""
        data = json.loads(Path(path).read_text())
        if "norm_stats" in data:
            return cls.from_dict(data["norm_stats"])
        if any(key in data for key in LEROBOT_KEYS):
            return cls.from_dict({ours: data[theirs] for theirs, ours in LEROBOT_KEYS.items() if theirs in data})
        raise ValueError(f"{path} is neither openpi's norm_stats.json nor LeRobot's stats.json (no state or action statistics).")

    @classmethod
    def from_dict(cls, data: dict) -> "NormStats":
        unknown = set(data) - {"state", "actions"}
        if unknown:
            raise ValueError(f"Unknown statistics {sorted(unknown)}; expected 'state' and/or 'actions'.")
        stats = {}
        for key, value in data.items():
            try:
                stats[key] = ArrayStats.from_dict(value)
            except ValueError as err:
                raise ValueError(f"'{key}' statistics: {err}") from None
        return cls(**stats)

    def to_dict(self) -> dict:
        return {key: stats.to_dict() for key in ("state", "actions") if (stats := getattr(self, key)) is not None}

    def to_json(self, path: str | os.PathLike) -> None:
        """Writes openpi's format."""
        Path(path).write_text(json.dumps({"norm_stats": self.to_dict()}, indent=2) + "\n")

    def cut(self, state: int | None = None, actions: int | None = None) -> "NormStats":
        """The statistics of the first `state` / `actions` dims (None: all), as openpi reads wider ones."""

        def first(stats: ArrayStats | None, dim: int | None) -> ArrayStats | None:
            if stats is None or dim is None:
                return stats
            return ArrayStats(**{name: None if value is None else value[:dim] for name, value in vars(stats).items()})

        return NormStats(state=first(self.state, state), actions=first(self.actions, actions))

    def get(self, key: str, mode: str) -> ArrayStats:
        """The statistics of `key`, checked to hold what `mode` needs."""
        stats = getattr(self, key)
        if stats is None:
            raise ValueError(f"The normalisation statistics have no '{key}' entry.")
        stats.require(mode, key)
        return stats

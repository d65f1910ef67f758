"""The JSON files of model folders (configs, weight indexes, LeRobot's processor pipelines), read with errors that
name the file. The commands that read them take folders other tools wrote, or copied, or cut short: a damaged file
there is the user's to be told about by name, not a traceback from the JSON parser."""

import json
from pathlib import Path


def read_json(path: str | Path, error: type[Exception] = ValueError) -> dict:
    """The JSON object in `path`; `error` where the file is not readable JSON, or holds something else."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # a missing or unreadable file, bad UTF-8 or bad JSON
        raise error(f"{path}: not readable JSON ({err}).") from err
    if not isinstance(data, dict):
        raise error(f"{path}: holds a JSON {type(data).__name__}, where an object ({{...}}) belongs.")
    return data


def index_shards(index: str | Path, error: type[Exception] = ValueError) -> list[str]:
    """The weight files a `model.safetensors.index.json` lists, in order."""
    weight_map = read_json(index, error).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise error(f"{index}: no 'weight_map' from tensor names to weight files.")
    return sorted(set(weight_map.values()))

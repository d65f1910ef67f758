"""The LeRobot-written datasets of ../shared/fixtures/lerobot go through `LeRobotDataset` and `pi train` as
through LeRobot's own loader: the same samples (pixels, state, action chunk, padding, task) and, by default,
the same normalisation statistics (the dataset's `meta/stats.json`)."""

import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoProcessor

import pi_cli
from conftest import FIXTURES, tiny_config
from modeling_pi import PiForActionGeneration
from processing_pi import NormStats
from test_lerobot_training import CAMERA_MAP, MAP_ARGS, _log, _processor
from training_pi import DatasetError, LeRobotDataset, compute_norm_stats, dataset_norm_stats

LEROBOT = FIXTURES / "lerobot"
KINDS = ("image", "video")
STATS_KEYS = {"observation.state": "state", "action": "actions"}


def _reference(kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """What LeRobot's `LeRobotDataset` returned for the fixture's indices: the JSON record and the tensors."""
    return (json.loads((LEROBOT / f"dataset_{kind}_samples.json").read_text()),
            load_file(LEROBOT / f"dataset_{kind}_samples.safetensors"))


def _horizon(record: dict) -> int:
    return len(record["delta_timestamps"]["action"])


def _as_lerobot_pixels(image: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> LeRobot's float CHW in [0, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


def _assert_samples_equal_lerobots(dataset: LeRobotDataset, record: dict, expected: dict[str, torch.Tensor], order):
    exact = {"rtol": 0, "atol": 0}
    for n in order:
        sample = dataset[record["indices"][n]]
        for camera in record["camera_keys"]:
            torch.testing.assert_close(_as_lerobot_pixels(sample["images"][CAMERA_MAP[camera]]), expected[camera][n], **exact)
        torch.testing.assert_close(torch.from_numpy(sample["state"]), expected["observation.state"][n], **exact)
        torch.testing.assert_close(torch.from_numpy(sample["actions"]), expected["action"][n], **exact)
        assert sample["action_is_pad"].tolist() == expected["action_is_pad"][n].tolist()
        assert sample["prompt"] == record["tasks"][n]


@pytest.mark.parametrize("kind", KINDS)
def test_samples_equal_lerobots_exactly(kind):
    """Video too: PyAV decodes the frame nearest the timestamp from its key frame, as LeRobot's PyAV path does,
    so the pixels are LeRobot's bit for bit (in any order of access: backwards needs a seek back)."""
    record, expected = _reference(kind)
    dataset = LeRobotDataset(LEROBOT / f"dataset_{kind}", _horizon(record), CAMERA_MAP)
    assert len(dataset) == record["len"]
    assert expected["action_is_pad"].any() and not expected["action_is_pad"].all()  # the records cover padding
    indices = range(len(record["indices"]))
    _assert_samples_equal_lerobots(dataset, record, expected, indices)
    _assert_samples_equal_lerobots(dataset, record, expected, reversed(indices))


def test_parquet_images_read_alike_decoded_or_as_raw_structs(tmp_path):
    """LeRobot's parquet declares the `datasets` Image feature (decoded on reading); without that declaration
    (as pandas writes it) the same column is a raw {bytes, path} struct."""
    root = shutil.copytree(LEROBOT / "dataset_image", tmp_path / "ds")
    data = root / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(data)
    pq.write_table(table.replace_schema_metadata(None), data)
    raw = LeRobotDataset(root, 10, CAMERA_MAP)
    assert all(isinstance(raw.frames.features[camera], dict) for camera in CAMERA_MAP)  # {bytes, path}
    record, expected = _reference("image")
    _assert_samples_equal_lerobots(raw, record, expected, range(len(record["indices"])))


# ---- statistics ---------------------------------------------------------------------------------------


def _stats_json(root) -> dict:
    return json.loads((root / "meta" / "stats.json").read_text())


def _assert_stats_are(stats: NormStats, stats_json: dict, names=("mean", "std", "q01", "q99")):
    for theirs, ours in STATS_KEYS.items():
        for name in names:
            np.testing.assert_array_equal(getattr(getattr(stats, ours), name), stats_json[theirs][name])


def test_dataset_stats_are_read_from_meta_stats_json_not_recomputed():
    root = LEROBOT / "dataset_image"
    dataset = LeRobotDataset(root, 10, CAMERA_MAP)
    stats = dataset_norm_stats(dataset, "quantile")
    _assert_stats_are(stats, _stats_json(root))
    with pytest.raises(ValueError, match="mode must be one of 'zscore', 'quantile', got 'z_score'"):  # a bare KeyError
        dataset_norm_stats(dataset, "z_score")
    exact = compute_norm_stats(dataset)  # LeRobot's q01/q99 average per-episode quantiles: not the exact ones
    assert not np.allclose(stats.actions.q01, exact.actions.q01) and not np.allclose(stats.state.q99, exact.state.q99)
    np.testing.assert_allclose(stats.actions.mean, exact.actions.mean, rtol=1e-5)  # a pooled mean is the mean


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny π0.5 (quantile normalisation) for the fixture datasets' cameras."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    PiForActionGeneration(tiny_config("pi05", image_keys=list(CAMERA_MAP.values()), action_horizon=10,
                                      max_token_len=64)).save_pretrained(folder)
    _processor(max_token_len=64).save_pretrained(folder)
    return folder


def _train(model_folder, dataset, output, *extra) -> int:
    return pi_cli.main(["train", "--model", str(model_folder), "--dataset", str(dataset), "--output", str(output),
                        "--steps", "2", "--batch-size", "4", "--logging-steps", "1", "--save-steps", "2", *MAP_ARGS, *extra])


@pytest.mark.parametrize("recompute", [False, True], ids=["stats.json", "recomputed"])
def test_pi_train_on_lerobots_image_dataset_normalises_with_the_stats_it_names(model_folder, tmp_path, recompute):
    root = LEROBOT / "dataset_image"
    output = tmp_path / "run"
    assert _train(model_folder, root, output, *(["--recompute-stats"] if recompute else [])) == 0
    losses = _log(output)
    assert len(losses) == 2 and all(np.isfinite(losses))
    saved = AutoProcessor.from_pretrained(output).norm_stats
    beside = NormStats.from_json(output / "norm_stats" / "stats.json")
    card = ModelCard.load(output / "README.md").text
    if recompute:
        exact = compute_norm_stats(LeRobotDataset(root, 10, CAMERA_MAP))
        for stats in (saved, beside):
            np.testing.assert_array_equal(stats.actions.q01, exact.actions.q01)
            np.testing.assert_array_equal(stats.state.q99, exact.state.q99)
        assert f"recomputed over all {_reference('image')[0]['len']} frames (exact quantiles)" in card
        assert "meta/stats.json" not in card
    else:
        for stats in (saved, beside):
            _assert_stats_are(stats, _stats_json(root))
        assert "Normalisation statistics: the dataset's `meta/stats.json`" in card and "recomputed" not in card


def _drop(root, feature: str, name: str) -> None:
    stats = _stats_json(root)
    del stats[feature][name]
    (root / "meta" / "stats.json").write_text(json.dumps(stats))


def test_stats_json_lacking_what_the_mode_needs_is_an_error_naming_file_and_key(tmp_path):
    root = shutil.copytree(LEROBOT / "dataset_image", tmp_path / "ds")
    _drop(root, "action", "q99")
    dataset = LeRobotDataset(root, 10, CAMERA_MAP)
    with pytest.raises(DatasetError, match=r"meta/stats\.json: 'action' has no 'q99', which quantile normalisation "
                                           r"needs; `pi train --recompute-stats`"):
        dataset_norm_stats(dataset, "quantile")
    _assert_stats_are(dataset_norm_stats(dataset, "zscore"), _stats_json(root), ("mean", "std"))  # z-score: enough
    _drop(root, "observation.state", "std")
    with pytest.raises(DatasetError, match=r"stats\.json: 'observation.state' has no 'std', which zscore"):
        dataset_norm_stats(dataset, "zscore")
    (root / "meta" / "stats.json").unlink()
    with pytest.raises(DatasetError, match=r"meta/stats\.json: missing; `pi train --recompute-stats`"):
        dataset_norm_stats(dataset, "zscore")


@pytest.mark.parametrize("version, message", [
    ("v2.1", "a LeRobot v2.1 dataset; pi train reads v3 datasets (LeRobot's convert_dataset_v21_to_v30"),
    ("v4.0", "a LeRobot v4.0 dataset; pi train reads v3 datasets."),
])
def test_a_dataset_of_another_lerobot_version_is_named_as_such(tmp_path, version, message):
    root = shutil.copytree(LEROBOT / "dataset_image", tmp_path / "ds")
    info = json.loads((root / "meta" / "info.json").read_text())
    (root / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": version}))
    with pytest.raises(DatasetError, match=re.escape(f"info.json: {message}")):
        LeRobotDataset(root, 10, CAMERA_MAP)


def test_pi_train_stops_on_incomplete_stats_and_recompute_stats_gets_past_it(model_folder, tmp_path, capsys):
    root = shutil.copytree(LEROBOT / "dataset_image", tmp_path / "ds")
    _drop(root, "observation.state", "q01")
    assert _train(model_folder, root, tmp_path / "refused") == 1
    assert "stats.json: 'observation.state' has no 'q01'" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert _train(model_folder, root, tmp_path / "run", "--recompute-stats") == 0

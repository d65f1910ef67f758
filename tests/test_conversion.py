"""The openpi converter: full-size coverage without weights, the command line, and refusal of bad checkpoints."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

import modeling_pi  # noqa: F401
import pi_cli
from conftest import OPENPI
from conversion.convert_openpi import convert_params, infer_config, load_openpi_params
from modeling_pi import PiConfig

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("variant", ["pi0", "pi05", "pi0_fast"])
def test_every_full_size_path_maps_onto_a_parameter_of_the_right_shape(variant):
    """On meta tensors: the released checkpoints' paths and shapes, no weights needed."""
    shapes = json.loads((OPENPI / "full_size_param_shapes" / f"{variant}.json").read_text())["params"]
    params = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    config = infer_config(params, variant)
    assert config.to_diff_dict() == PiConfig(variant=variant).to_diff_dict()
    state_dict = convert_params(params, config)  # raises on any unused, missing or mis-shaped parameter
    assert sum(t.numel() for t in state_dict.values()) == sum(int(np.prod(s)) for s in shapes.values())


def test_both_checkpoint_layouts_are_read():
    """π0's fixture has the released layout, π0.5's the training one (trailing `value`): same key style."""
    released, training = load_openpi_params(OPENPI / "pi0"), load_openpi_params(OPENPI / "pi05" / "params")
    assert "PaliGemma/llm/embedder/input_embedding" in released
    assert "PaliGemma/llm/embedder/input_embedding" in training
    assert not any(key.endswith("value") for key in training)


def _run(*args):
    return subprocess.run([*args], capture_output=True, text=True, timeout=300)


def _pi(capsys, *args) -> tuple[int, str]:
    """`pi ...` in this process (faster than a subprocess; the two tests above cover the installed commands)."""
    code = pi_cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_pi_convert_openpi_writes_a_folder_automodel_loads(tmp_path):
    output = tmp_path / "pi05"
    result = _run(BIN / "pi", "convert", "openpi", "--checkpoint", OPENPI / "pi05", "--variant", "pi05",
                  "--output", output, "--action-horizon", "50", "--max-token-len", "200")
    assert result.returncode == 0, result.stderr
    assert "converting" in result.stderr  # the progress bar
    model = AutoModel.from_pretrained(output)
    assert model.config.variant == "pi05" and model.config.action_horizon == 50 and model.config.max_token_len == 200
    card = (output / "README.md").read_text()
    assert "pipeline_tag: robotics" in card and "π0.5" in card and "`pi05`" in card and "state is written into the prompt" in card
    assert f"{model.num_parameters():,}" in card
    original = load_openpi_params(OPENPI / "pi05")
    torch.testing.assert_close(model.language_model.embed_tokens.weight,
                               torch.from_numpy(original["PaliGemma/llm/embedder/input_embedding"]), atol=0, rtol=0)


def test_module_entry_point_takes_the_same_flags_and_bfloat16(tmp_path):
    output = tmp_path / "pi0-bf16"
    result = _run(sys.executable, "-m", "conversion.convert_openpi", "--checkpoint", OPENPI / "pi0" / "params",
                  "--variant", "pi0", "--output", output, "--action-horizon", "16", "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    weights = load_file(output / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    model = AutoModel.from_pretrained(output)
    assert model.dtype == torch.bfloat16 and model.config.action_horizon == 16 and model.config.max_token_len == 48


# ---- refusing bad checkpoints --------------------------------------------------------------------


def _write_checkpoint(path: Path, flat: dict) -> Path:
    tree = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(path / "params", args=ocp.args.PyTreeSave({"params": tree}))
    return path


def _damaged(flat, damage):
    flat = dict(flat)
    if damage == "missing":
        del flat["PaliGemma/llm/layers/mlp_1/linear"]
    elif damage == "extra":
        flat["PaliGemma/llm/surplus/kernel"] = np.zeros((2, 2), np.float32)
    elif damage == "misshaped":
        flat["action_out_proj/kernel"] = np.zeros((32, 31), np.float32)
    elif damage == "misshaped layer":
        flat["PaliGemma/llm/layers/attn/kv_einsum/w"] = flat["PaliGemma/llm/layers/attn/kv_einsum/w"][:, :, :, :60]
    return flat


@pytest.mark.parametrize("damage, variant, message", [
    ("missing", "pi0", "mlp_1/linear"),
    ("extra", "pi0", "surplus"),
    ("misshaped", "pi0", "action_out_proj"),
    ("misshaped layer", "pi0", "kv_einsum"),
    ("none", "pi05", "pi0 checkpoint"),
    ("none", "pi0_fast", "pi0 checkpoint"),
])
def test_bad_checkpoints_make_the_converter_exit_non_zero_and_write_nothing(tmp_path, capsys, damage, variant, message):
    checkpoint = _write_checkpoint(tmp_path / "ckpt", _damaged(load_openpi_params(OPENPI / "pi0"), damage))
    output = tmp_path / "out"
    code, stderr = _pi(capsys, "convert", "openpi", "--checkpoint", checkpoint, "--variant", variant, "--output", output)
    assert code != 0
    assert message in stderr
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging folder left behind either


def test_pi0_fast_converts_and_a_fast_checkpoint_is_not_taken_for_pi0(tmp_path, capsys):
    code, stderr = _pi(capsys, "convert", "openpi", "--checkpoint", OPENPI / "pi0_fast", "--variant", "pi0",
                       "--output", tmp_path / "wrong")
    assert code != 0 and "pi0_fast checkpoint" in stderr and not (tmp_path / "wrong").exists()
    code, stderr = _pi(capsys, "convert", "openpi", "--checkpoint", OPENPI / "pi0_fast", "--variant", "pi0_fast",
                       "--output", tmp_path / "fast", "--action-horizon", "32", "--max-token-len", "60")
    assert code == 0, stderr
    model = AutoModel.from_pretrained(tmp_path / "fast")
    assert model.config.variant == "pi0_fast" and model.action_expert is None
    assert "π0-FAST" in (tmp_path / "fast" / "README.md").read_text()


def test_converter_refuses_to_overwrite_and_to_read_non_checkpoints(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    code, stderr = _pi(capsys, "convert", "openpi", "--checkpoint", OPENPI / "pi0", "--variant", "pi0",
                       "--output", tmp_path / "out")
    assert code != 0 and "already exists" in stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"
    code, stderr = _pi(capsys, "convert", "openpi", "--checkpoint", tmp_path, "--variant", "pi0", "--output", tmp_path / "x")
    assert code != 0 and "not an orbax checkpoint" in stderr


def test_a_damaged_checkpoint_is_refused_at_conversion_and_at_loading(tmp_path, capsys, monkeypatch):
    params = load_openpi_params(OPENPI / "pi0")
    damaged = "PaliGemma/llm/layers/mlp/linear"
    params[damaged] = params[damaged].copy()
    params[damaged].reshape(-1)[123] = np.nan  # as zeroed bytes inside a compressed chunk decode
    monkeypatch.setattr("conversion.convert_openpi.load_openpi_params", lambda checkpoint: params)
    code = pi_cli.main(["convert", "openpi", "--checkpoint", str(OPENPI / "pi0"), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 1 and "1 tensor(s) of pi0 hold non-finite values: language_model.layers.0.mlp.down_proj.weight" in error
    assert not (tmp_path / "out").exists()

    monkeypatch.undo()
    assert pi_cli.main(["convert", "openpi", "--checkpoint", str(OPENPI / "pi0"), "--output", str(tmp_path / "good")]) == 0
    weights = load_file(tmp_path / "good" / "model.safetensors")
    weights["action_out_proj.bias"][0] = float("inf")
    save_file(weights, tmp_path / "good" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="NaN or infinite values in 1 tensor.*action_out_proj.bias"):
        AutoModel.from_pretrained(tmp_path / "good")

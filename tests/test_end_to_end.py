"""Whole openpi checkpoints (params + assets) converted into Hub-ready folders, then used the way a robot
would: raw images, prompt and state in, actions in the robot's units out."""

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoProcessor

import modeling_pi  # noqa: F401
import pi_cli
from conftest import CAMERAS, FIXTURES, OPENPI, load_fixture_io
from processing_pi import NormStats, PiProcessor

PROCESSOR = FIXTURES / "processor"
ROBOT_DIM = 7


def _openpi_checkpoint(tmp_path, variant, assets=("robot",)):
    """An openpi checkpoint folder: the fixture params plus assets/<id>/norm_stats.json."""
    root = tmp_path / f"{variant}-ckpt"
    shutil.copytree(OPENPI / variant / "params", root / "params")
    for asset in assets:
        (root / "assets" / asset).mkdir(parents=True)
        shutil.copy(PROCESSOR / "norm_stats.json", root / "assets" / asset / "norm_stats.json")
    return root


def _convert(capsys, checkpoint, variant, output, *extra):
    sizes = json.loads((OPENPI / variant / "fixture.json").read_text())
    args = ["convert", "openpi", "--checkpoint", checkpoint, "--variant", variant, "--output", output,
            "--action-horizon", sizes["action_horizon"], "--max-token-len", sizes["max_token_len"],
            "--tokenizer", PROCESSOR / "tokenizer.model", *extra]
    code = pi_cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def _raw_images(io_variant):
    """The fixture's cameras as a robot hands them over: uint8 HWC, one list per camera (None: absent)."""
    from safetensors.numpy import load_file

    io = load_file(OPENPI / io_variant / "io.safetensors")
    return {cam: [image if present else None for image, present in zip(io[f"image.{cam}"], io[f"image_mask.{cam}"])]
            for cam in CAMERAS}


@pytest.mark.parametrize("variant", ["pi05", "pi0_fast"])
def test_converted_checkpoint_runs_from_raw_inputs_to_robot_actions(tmp_path, capsys, variant):
    extra = ["--fast-tokenizer", PROCESSOR / "fast_tokenizer"] if variant == "pi0_fast" else []
    code, stderr = _convert(capsys, _openpi_checkpoint(tmp_path, variant), variant, tmp_path / "out", *extra)
    assert code == 0, stderr
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert isinstance(processor, PiProcessor) and processor.norm_stats is not None

    stats = NormStats.from_json(PROCESSOR / "norm_stats.json")
    raw_state = np.stack([stats.state.mean, stats.state.mean + stats.state.std])  # robot units
    images = _raw_images(variant)
    images["base_0_rgb"] = [np.asarray(img)[:100] for img in images["base_0_rgb"]]  # any size: resized with padding
    inputs = processor(images=images, prompt=["pick up the red cup", "open the drawer"], state=raw_state)
    with torch.no_grad():
        if variant == "pi0_fast":
            generated = model.generate_actions(**inputs, max_new_tokens=12, allowed_token_ids=processor.action_token_ids())
            after_eos = (generated == processor.tokenizer.eos_token_id).long().cumsum(1) - (generated == processor.tokenizer.eos_token_id).long() > 0
            assert torch.isin(generated[~after_eos], processor.action_token_ids()).all()
            assert (generated[after_eos] == processor.tokenizer.pad_token_id).all()  # padding after a row's EOS
        else:
            generated = model.generate_actions(**inputs, generator=torch.Generator().manual_seed(0))
    out = processor.post_process(generated)
    assert out.actions.shape == (2, model.config.action_horizon, ROBOT_DIM)
    assert out.valid.dtype == torch.bool and torch.isfinite(out.actions).all()
    # an undecodable FAST answer is flagged, with openpi's fallback: the normalised zero chunk in robot units
    fallback = stats.actions.unnormalize(np.zeros(out.actions.shape[1:]), processor.norm_mode)
    torch.testing.assert_close(out.actions[~out.valid].double(), torch.from_numpy(fallback).expand_as(out.actions[~out.valid]))
    if variant == "pi05":
        assert out.valid.all()
        # in robot units: quantile-normalised outputs in [-1, 1] map inside the [q01, q99] band, give or take
        normalised = torch.from_numpy(stats.actions.normalize(out.actions.double().numpy(), "quantile"))
        torch.testing.assert_close(normalised, generated[..., :ROBOT_DIM].double(), atol=1e-5, rtol=0)


def test_pi0_pipeline_reproduces_the_reference_samples_in_robot_units(converted, tokenizer_path=PROCESSOR / "tokenizer.model"):
    """z-score stats: raw state -> processor -> model -> post_process equals un-normalising the reference's sample."""
    io = load_fixture_io("pi0")
    dim = io["state"].shape[-1]
    stats = NormStats.from_dict({key: {"mean": np.linspace(-2, 2, dim).tolist(), "std": np.linspace(0.5, 2, dim).tolist()}
                                 for key in ("state", "actions")})
    raw_state = stats.state.unnormalize(io["state"].double().numpy(), "zscore")
    model = AutoModel.from_pretrained(converted("pi0")).eval()
    from processing_pi import PiImageProcessor, tokenizer_from_sentencepiece

    processor = PiProcessor(PiImageProcessor(), tokenizer_from_sentencepiece(tokenizer_path), norm_stats=stats, variant="pi0")
    inputs = processor(images=_raw_images("pi0"), prompt=["unused", "unused"], state=raw_state)
    present = io["pixel_attention_mask"]
    assert torch.equal(inputs["pixel_attention_mask"], present)
    torch.testing.assert_close(inputs["pixel_values"][present], io["pixel_values"][present], atol=1e-6, rtol=0)
    torch.testing.assert_close(inputs["state"], io["state"], atol=1e-5, rtol=0)
    # The fixture's prompt ids come from a random vocabulary, not from this tokenizer: use them as given.
    inputs["input_ids"], inputs["attention_mask"] = io["input_ids"], io["attention_mask"]
    with torch.no_grad():
        actions = processor.post_process(model.generate_actions(**inputs, noise=io["noise"])).actions
    expected = stats.actions.unnormalize(io["expected.sample_actions_10_steps"].double().numpy(), "zscore")
    torch.testing.assert_close(actions.double(), torch.from_numpy(expected), atol=5e-4 * 2.0, rtol=0)


def test_asset_choice_and_missing_fast_tokenizer_are_errors(tmp_path, capsys):
    checkpoint = _openpi_checkpoint(tmp_path, "pi05", assets=("arm_a", "arm_b"))
    code, stderr = _convert(capsys, checkpoint, "pi05", tmp_path / "out")
    assert code != 0 and "--asset-id" in stderr and not (tmp_path / "out").exists()
    code, stderr = _convert(capsys, checkpoint, "pi05", tmp_path / "out", "--asset-id", "arm_c")
    assert code != 0 and "arm_c" in stderr
    code, stderr = _convert(capsys, checkpoint, "pi05", tmp_path / "out", "--asset-id", "arm_b")
    assert code == 0, stderr
    assert AutoProcessor.from_pretrained(tmp_path / "out").norm_stats.state.dim == ROBOT_DIM
    fast = _openpi_checkpoint(tmp_path, "pi0_fast")
    code, stderr = _convert(capsys, fast, "pi0_fast", tmp_path / "fast")
    assert code != 0 and "--fast-tokenizer" in stderr and not (tmp_path / "fast").exists()
    code, stderr = _convert(capsys, fast, "pi0_fast", tmp_path / "fast", "--fast-tokenizer", str(tmp_path / "mistyped"))
    assert code != 0 and "mistyped: no such folder (nor a Hub id" in stderr and not (tmp_path / "fast").exists()
    code, stderr = _convert(capsys, tmp_path / "no_checkpoint", "pi05", tmp_path / "fast")
    assert code != 0 and "no_checkpoint: no such folder" in stderr and not (tmp_path / "fast").exists()

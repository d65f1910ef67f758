"""openpi LoRA fine-tunes (`*_low_mem_finetune`) convert to plain models with their adapters merged.

openpi applies a LoRA pair to an einsum weight in two einsums, made from the weight's equation by putting the
rank's label L in place of the weight's last axis (first einsum, with `lora_a`) and of its second-to-last axis
(second einsum, with `lora_b`), scaled by alpha / rank; its feed-forward adds x·a·b unscaled. The equations
below are openpi's, written out ("2" and "3" spelled C for torch.einsum).
"""

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoModel

import pi_cli
from conftest import OPENPI
from conversion.convert_openpi import load_openpi_params
from conversion.hf_folder import ConversionError
from conversion.openpi_configs import openpi_config
from conversion.openpi_lora import merge_lora
from test_conversion import _pi, _write_checkpoint

ATTN = "PaliGemma/llm/layers/attn"
MLP = "PaliGemma/llm/layers/mlp"
# weight name: (its equation, the LoRA pair's first and second equation), as openpi's einsums compute them
EINSUMS = {
    "q_einsum": ("BTD,NDH->BTNH", "BTD,NDL->BTNL", "BTNL,NLH->BTNH"),
    "kv_einsum": ("BSD,CKDH->CBSKH", "BSD,CKDL->CBSKL", "CBSKL,CKLH->CBSKH"),
    "qkv_einsum": ("BSD,CKDH->CBSKH", "BSD,CKDL->CBSKL", "CBSKL,CKLH->CBSKH"),
    "attn_vec_einsum": ("BTNH,NHD->BTD", "BTNH,NHL->BTL", "BTL,NLD->BTD"),
}


def _random(generator, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * 0.1


def _lora_pair(generator, weight_shape, rank):
    """Random factors for a stacked weight [L, ..., I, O]: a [L, ..., I, r], b [L, ..., r, O]."""
    *batch, inner, outer = weight_shape
    return _random(generator, *batch, inner, rank), _random(generator, *batch, rank, outer)


@pytest.mark.parametrize("name", EINSUMS)
def test_a_merged_attention_weight_computes_what_openpis_two_lora_einsums_add(name):
    generator = torch.Generator().manual_seed(0)
    shape = {"q_einsum": (2, 4, 8, 5), "kv_einsum": (2, 2, 2, 8, 5), "qkv_einsum": (2, 3, 4, 8, 5),
             "attn_vec_einsum": (2, 4, 5, 8)}[name]
    w = _random(generator, *shape)
    a, b = _lora_pair(generator, shape, rank=3)
    merged, ranks = merge_lora({f"{ATTN}/{name}/w": w, f"{ATTN}/{name}/lora_a": a, f"{ATTN}/{name}/lora_b": b},
                               lora_alpha=6.0)
    assert list(merged) == [f"{ATTN}/{name}/w"] and ranks == {f"{ATTN}/{name}/w": 3}
    equation, first, second = EINSUMS[name]
    x = _random(generator, 2, 3, *((4, 5) if name == "attn_vec_einsum" else (8,)))
    for layer in range(2):
        expected = torch.einsum(equation, x, w[layer]) + 2.0 * torch.einsum(second, torch.einsum(first, x, a[layer]),
                                                                              b[layer])
        torch.testing.assert_close(torch.einsum(equation, x, merged[f"{ATTN}/{name}/w"][layer].double()), expected,
                                   rtol=1e-5, atol=1e-6)


def test_merged_mlp_weights_add_the_lora_products_unscaled_as_openpis_feed_forward_does():
    generator = torch.Generator().manual_seed(1)
    gating, linear = _random(generator, 2, 2, 8, 12), _random(generator, 2, 12, 8)  # [L, 2, D, F], [L, F, D]
    gating_a, gating_b = _lora_pair(generator, gating.shape, rank=3)
    linear_a, linear_b = _lora_pair(generator, linear.shape, rank=3)
    params = {f"{MLP}_1/gating_einsum": gating, f"{MLP}_1/linear": linear,
              f"{MLP}_1/gating_einsum_lora_a": gating_a, f"{MLP}_1/gating_einsum_lora_b": gating_b,
              f"{MLP}_1/linear_lora_a": linear_a, f"{MLP}_1/linear_lora_b": linear_b}
    merged, _ = merge_lora(params, lora_alpha=6.0)  # alpha scales attention adapters only
    assert sorted(merged) == [f"{MLP}_1/gating_einsum", f"{MLP}_1/linear"]
    x, hidden = _random(generator, 3, 8), _random(generator, 3, 12)
    for layer in range(2):
        for half in range(2):
            expected = x @ gating[layer, half] + (x @ gating_a[layer, half]) @ gating_b[layer, half]
            torch.testing.assert_close(x @ merged[f"{MLP}_1/gating_einsum"][layer, half].double(), expected)
        expected = hidden @ linear[layer] + (hidden @ linear_a[layer]) @ linear_b[layer]
        torch.testing.assert_close(hidden @ merged[f"{MLP}_1/linear"][layer].double(), expected)


def _with_lora(params: dict, generator) -> dict:
    """The fixture's π0 parameters with LoRA factors on every adapted weight of both experts (ranks 4 and 8)."""
    params = dict(params)
    for suffix, rank in (("", 4), ("_1", 8)):
        adapted = [(f"{ATTN}/{name}{suffix}/w", f"{ATTN}/{name}{suffix}/lora")
                   for name in ("q_einsum", "kv_einsum", "attn_vec_einsum")]
        adapted += [(f"{MLP}{suffix}/{name}", f"{MLP}{suffix}/{name}_lora") for name in ("gating_einsum", "linear")]
        for weight, factors in adapted:
            a, b = _lora_pair(generator, params[weight].shape, rank)
            params[f"{factors}_a"], params[f"{factors}_b"] = a.float().numpy(), b.float().numpy()
    return params


def test_a_lora_fine_tune_converts_to_a_model_whose_layers_compute_what_openpi_computes(tmp_path, capsys):
    params = _with_lora(load_openpi_params(OPENPI / "pi0"), torch.Generator().manual_seed(2))
    checkpoint = _write_checkpoint(tmp_path / "pi0_lora", params)
    code = pi_cli.main(["convert", "openpi", "--checkpoint", str(checkpoint), "--variant", "pi0", "--output",
                        str(tmp_path / "out")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "LoRA adapters (rank 4 and 8) are added into the 10 weights" in printed.out
    assert "LoRA adapters added into the weights" in (tmp_path / "out" / "README.md").read_text()
    model = AutoModel.from_pretrained(tmp_path / "out")
    t = {key: torch.from_numpy(np.asarray(value)).double() for key, value in params.items()}

    def lora(factors, x, first, second):  # openpi's LoRA term of layer 1's factors `{factors}_a`, `_b` for the input x
        return torch.einsum(second, torch.einsum(first, x, t[f"{factors}_a"][1]), t[f"{factors}_b"][1])

    generator = torch.Generator().manual_seed(3)
    for suffix, expert in (("", model.language_model), ("_1", model.action_expert)):
        layer = expert.layers[1].double()
        width, heads, head_dim = layer.self_attn.q_proj.in_features, 4, 16
        x = _random(generator, 1, 3, width)
        equation, first, second = EINSUMS["q_einsum"]
        q = (torch.einsum(equation, x, t[f"{ATTN}/q_einsum{suffix}/w"][1])
             + lora(f"{ATTN}/q_einsum{suffix}/lora", x, first, second))
        torch.testing.assert_close(layer.self_attn.q_proj(x).view(1, 3, heads, head_dim), q)
        equation, first, second = EINSUMS["kv_einsum"]
        kv = (torch.einsum(equation, x, t[f"{ATTN}/kv_einsum{suffix}/w"][1])
              + lora(f"{ATTN}/kv_einsum{suffix}/lora", x, first, second))
        torch.testing.assert_close(layer.self_attn.v_proj(x).view(1, 3, 1, head_dim), kv[1])
        encoded = _random(generator, 1, 3, heads, head_dim)
        equation, first, second = EINSUMS["attn_vec_einsum"]
        out = (torch.einsum(equation, encoded, t[f"{ATTN}/attn_vec_einsum{suffix}/w"][1])
               + lora(f"{ATTN}/attn_vec_einsum{suffix}/lora", encoded, first, second))
        torch.testing.assert_close(layer.self_attn.o_proj(encoded.flatten(2)), out)
        hidden = _random(generator, 1, 3, layer.mlp.down_proj.in_features)
        down = (hidden @ t[f"{MLP}{suffix}/linear"][1]
                + lora(f"{MLP}{suffix}/linear_lora", hidden, "btf,fl->btl", "btl,ld->btd"))
        torch.testing.assert_close(layer.mlp.down_proj(hidden), down)


@pytest.mark.parametrize("damage, message", [
    ("lone factor", "q_einsum_1/lora_a without the other factor"),
    ("misshaped factor", "do not adapt its"),
    ("alpha", "alpha must be a finite number above 0"),
])
def test_a_damaged_lora_checkpoint_is_refused_naming_the_factor(tmp_path, capsys, damage, message):
    params = _with_lora(load_openpi_params(OPENPI / "pi0"), torch.Generator().manual_seed(4))
    if damage == "lone factor":
        del params[f"{ATTN}/q_einsum_1/lora_b"]
    elif damage == "misshaped factor":
        params[f"{MLP}/linear_lora_b"] = params[f"{MLP}/linear_lora_b"][:, :2]
    checkpoint = _write_checkpoint(tmp_path / "ckpt", params)
    alpha = ["--lora-alpha", "0"] if damage == "alpha" else []
    code, stderr = _pi(capsys, "convert", "openpi", "--checkpoint", checkpoint, "--output", tmp_path / "out", *alpha)
    assert code != 0 and message in stderr and not (tmp_path / "out").exists()


def test_lora_alpha_scales_the_attention_adapters_by_alpha_over_rank():
    generator = torch.Generator().manual_seed(5)
    w = _random(generator, 1, 2, 6, 4)
    a, b = _lora_pair(generator, w.shape, rank=2)
    params = {f"{ATTN}/q_einsum/w": w, f"{ATTN}/q_einsum/lora_a": a, f"{ATTN}/q_einsum/lora_b": b}
    default, _ = merge_lora(params)
    doubled, _ = merge_lora(params, lora_alpha=4.0)
    torch.testing.assert_close(default[f"{ATTN}/q_einsum/w"].double() - w, (a @ b), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(doubled[f"{ATTN}/q_einsum/w"].double() - w, 2 * (a @ b), rtol=1e-5, atol=1e-7)
    with pytest.raises(ConversionError, match="alpha"):
        merge_lora(params, lora_alpha=float("nan"))


def test_openpis_lora_configs_are_the_policies_of_their_full_fine_tunes():
    for lora_config, full in (("pi0_libero_low_mem_finetune", "pi0_libero"),
                              ("pi0_fast_libero_low_mem_finetune", "pi0_fast_libero")):
        low_mem = openpi_config(lora_config)
        assert low_mem.robot.name == lora_config
        assert replace(low_mem, robot=replace(low_mem.robot, name=full)) == openpi_config(full)

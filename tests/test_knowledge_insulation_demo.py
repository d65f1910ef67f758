"""The recipe's knowledge insulation (`python -m demo_pi.recipe --knowledge-insulation`): a FAST tokenizer fitted on
the demonstrations, a word-level vocabulary that holds its ids, a prompt budget that cuts no target, and a training
step of the toy π0.5 that learns from both losses."""

import logging

import numpy as np
import pytest
import torch

from demo_pi.demonstrations import IMAGE_KEYS, write_demonstrations
from demo_pi.recipe import (DEFAULT_FAST_VOCAB, action_chunks, fast_prompt_budget, fit_fast_tokenizer, init_model_folder, main,
                            task_tokenizer, train_arguments)
from modeling_pi import PiForActionGeneration
from processing_pi import PiProcessor
from processing_pi.prompts import fast_ids_to_vocab
from training_pi import LeRobotDataset, PiCollator, compute_norm_stats


@pytest.fixture(scope="module")
def insulated(tmp_path_factory):
    """The recipe's KI setup on 8 demonstrations: (init folder, FAST tokenizer, processor with it, the frames)."""
    root = tmp_path_factory.mktemp("ki")
    dataset = write_demonstrations(root / "demonstrations", range(8), 0.3)
    fast, longest = fit_fast_tokenizer(dataset, DEFAULT_FAST_VOCAB)
    init = init_model_folder(root / "init", "pi05", 0, DEFAULT_FAST_VOCAB, fast_prompt_budget(longest))
    frames = LeRobotDataset(dataset, 8, {key: camera for camera, key in IMAGE_KEYS.items()})
    processor = PiProcessor.from_pretrained(init).replace(action_tokenizer=fast, knowledge_insulation=True,
                                                                       norm_stats=compute_norm_stats(frames))
    return init, fast, processor, frames


def test_the_vocabulary_holds_the_fast_ids_and_keeps_the_words():
    plain, sized = task_tokenizer(), task_tokenizer(DEFAULT_FAST_VOCAB)
    assert len(sized) == len(plain) + 1 + DEFAULT_FAST_VOCAB + 128  # "|", the FAST ids and the 128 kept clear
    assert {token: i for token, i in sized.get_vocab().items() if i < len(plain)} == plain.get_vocab()
    mapped = fast_ids_to_vocab(range(DEFAULT_FAST_VOCAB), len(sized))
    assert all(token.startswith("<reserved_") for token in sized.convert_ids_to_tokens(mapped))
    assert sized.encode("|", add_special_tokens=False) == [len(plain)]


def test_training_batches_carry_every_fast_target_within_the_prompt(insulated, caplog):
    init, fast, processor, frames = insulated
    config = PiForActionGeneration.config_class.from_pretrained(init)
    assert config.text_config.vocab_size == len(processor.tokenizer) >= fast.vocab_size + 129
    assert config.max_token_len == processor.max_token_len
    samples = [frames[i] for i in range(len(frames))]
    chunks = action_chunks(frames)  # what the tokenizer was fitted on: the chunks `pi train` samples
    np.testing.assert_array_equal(chunks.astype(np.float32), np.stack([sample["actions"] for sample in samples]))
    # the longest prompt: a state below the statistics' q01 in both dims is written "-1", two tokens each
    samples[0] = {**samples[0], "state": np.full(2, -10.0, dtype=np.float32)}
    with caplog.at_level(logging.WARNING):
        batch = PiCollator(processor)(samples)
    assert "cut off" not in caplog.text
    targets = batch["labels"] != -100
    assert torch.equal(targets, batch["token_type_ids"].bool())
    eos, bar = processor.tokenizer.eos_token_id, processor.tokenizer.convert_tokens_to_ids("|")
    lengths = targets.sum(dim=1)
    for row, sample in enumerate(samples):
        ids = fast(processor.norm_stats.actions.normalize(sample["actions"].astype(np.float64), "quantile"))[0]
        labels = batch["labels"][row][targets[row]].tolist()
        assert labels == fast_ids_to_vocab(ids, len(processor.tokenizer)) + [bar, eos]
    assert lengths.min() > 0 and (batch["attention_mask"].sum(dim=1) <= processor.max_token_len).all()


def test_one_training_step_learns_from_both_losses(insulated):
    init, fast, processor, frames = insulated
    torch.manual_seed(0)
    model = PiForActionGeneration.from_pretrained(init).train()
    model.config.knowledge_insulation = True
    batch = PiCollator(processor)([frames[i] for i in range(0, len(frames), max(1, len(frames) // 8))])
    out = model(**batch)
    assert torch.isfinite(out.flow_loss) and torch.isfinite(out.fast_loss)
    torch.testing.assert_close(out.loss, out.flow_loss + out.fast_loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out.loss.backward()
    assert model.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0  # the FAST loss trains the backbone
    # the flow loss the expert: at initialisation through its adaptive norms (their zero-initialised gates keep
    # every expert layer's output, and so the attention and MLP weights' gradients, at zero until they move)
    assert model.action_expert.layers[0].input_layernorm.modulation.weight.grad.abs().sum() > 0
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_recipe_trains_with_knowledge_insulation_only_when_asked(tmp_path):
    plain = train_arguments(tmp_path / "init", tmp_path / "data", tmp_path / "out", 100)
    insulated = train_arguments(tmp_path / "init", tmp_path / "data", tmp_path / "out", 100, fast_tokenizer=tmp_path / "fast")
    assert "--knowledge-insulation" not in plain and "--fast-tokenizer" not in plain
    assert insulated[insulated.index("--fast-tokenizer") + 1] == str(tmp_path / "fast")
    assert [a for a in insulated if a not in ("--knowledge-insulation", "--fast-tokenizer", str(tmp_path / "fast"))] == plain
    for refused in (["--variant", "pi0", "--knowledge-insulation"], ["--init", "demo_pi/model", "--fast-vocab", "256"]):
        with pytest.raises(SystemExit):
            main(["--output", str(tmp_path / "run"), *refused])
    assert not (tmp_path / "run").exists()


def test_the_sized_model_starts_from_the_recipes_weights(tmp_path, insulated):
    """Room for FAST ids changes no initial weight: the baseline without knowledge insulation is the recipe's run."""
    from safetensors.torch import load_file

    recipe = load_file(init_model_folder(tmp_path / "recipe") / "model.safetensors")
    sized = load_file(insulated[0] / "model.safetensors")
    embedding = "language_model.embed_tokens.weight"
    assert set(recipe) == set(sized) and len(sized[embedding]) == len(task_tokenizer(DEFAULT_FAST_VOCAB))
    torch.testing.assert_close(sized[embedding][: len(recipe[embedding])], recipe[embedding], atol=0, rtol=0)
    for name in recipe.keys() - {embedding}:
        torch.testing.assert_close(sized[name], recipe[name], atol=0, rtol=0, msg=name)

"""The recipe that trains the shipped demo policy from scratch on CPU: demonstrations, a small π0.5 (or
π0) with a word-level tokenizer of the task's few words, then `pi train`, then held-out episodes.

    python -m demo_pi.recipe --output runs/demo [--overwrite] [--variant pi05|pi0] [--episodes 2000] [--steps 4000]
                             [--perturbation 0.3] [--ship demo_pi/model] [--init FOLDER] [--rtc-max-delay N]
                             [--knowledge-insulation] [--fast-vocab N]

The model is the π architecture at toy size (SigLIP 2 layers on 32 px images in 8 px patches, Gemma
4 layers of width 96, an action expert of width 48), about 600 thousand parameters, trained fully
(there is nothing pretrained to keep). The demonstrations' executed actions carry noise (the recorded
ones do not), so the data also shows the way back from slightly wrong states. The tokenizer is built
with `tokenizers` from the words a prompt of this task can contain, so the embedding table stays
small (PaliGemma's 257k-entry vocabulary would be 99% of the model). With the defaults the loss
drops sharply after about 2500 steps, once the policy has learned which block the prompt names.

`--init demo_pi/model --rtc-max-delay 3` fine-tunes the shipped policy instead of a fresh one, with clean action
prefixes of 0 to 3 steps (`pi train --rtc-max-delay`) that hold the actions the robot executed, perturbation
included (`--rtc-prefix-key action.executed`), and the expert's actions from where those led as the rest:
real-time chunking learnt in training, as shipped in `demo_pi/model_rtc` (see docs/demo.md for the exact command).

`--knowledge-insulation` (π0.5) trains with knowledge insulation (`pi train --knowledge-insulation`): a FAST
tokenizer of `--fast-vocab` tokens (256 by default) is fitted on the demonstrations' normalised chunks, the word-level
vocabulary gains "|" and reserved tokens at its end for the FAST ids, and the prompt budget grows by the longest
chunk's FAST tokens. `--fast-vocab N` alone builds the same vocabulary and prompt budget and trains without knowledge
insulation: the like-for-like baseline (`python -m demo_pi.knowledge_insulation_eval` runs both; docs/demo.md).
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from configuration_pi import PiConfig
from processing_pi import FastActionTokenizer, PiImageProcessor, PiProcessor
from processing_pi.prompts import FAST_SKIP_TOKENS, tokenize_prompt

from .demonstrations import EXECUTED, IMAGE_KEYS, write_demonstrations
from .tabletop import CAMERAS, COLORS, IMAGE_SIZE, prompt_for

ACTION_HORIZON = 8
# π0.5's prompt carries the state ("Task: ..., State: x y;\nAction: ", 17 tokens); π0's only the task (7).
MAX_TOKEN_LEN = {"pi05": 20, "pi0": 8}
TRAIN_SEEDS_START, HELD_OUT_SEEDS_START = 0, 1_000_000  # demonstrations and evaluation never share a seed
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
WORDS = ["Task", "State", "Action", "move", "to", "the", "block", *COLORS, ":", ",", ";", "\n"]
# Knowledge insulation's targets: the chunk's FAST ids (mapped to the vocabulary's end), then "|" and EOS.
FAST_END = "|"
DEFAULT_FAST_VOCAB = 256  # the byte-level BPE's own alphabet: one token per DCT coefficient (docs/demo.md)


def task_tokenizer(fast_vocab: int = 0) -> PreTrainedTokenizerFast:
    """Word-level: the special tokens, the prompt words, and the state bins 0..255 as whole numbers. With
    `fast_vocab` > 0, then "|" and `fast_vocab` + 128 reserved tokens: the FAST ids of a tokenizer of that size
    land on the reserved ones (`fast_ids_to_vocab` keeps the last 128 ids clear), no word is shared with them."""
    reserved = [FAST_END] + [f"<reserved_{i}>" for i in range(fast_vocab + FAST_SKIP_TOKENS)] if fast_vocab else []
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + WORDS + [str(i) for i in range(256)] + reserved)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="removed"),
        pre_tokenizers.Split(Regex(r"[A-Za-z]+|\d+|[^A-Za-z\d]"), behavior="isolated"),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)


def small_config(variant: str = "pi05", vocab_size: int = 512, max_token_len: int | None = None) -> PiConfig:
    gemma = {"model_type": "gemma", "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 1,
             "head_dim": 24, "hidden_act": "gelu_pytorch_tanh", "use_bidirectional_attention": True}
    return PiConfig(
        variant=variant,
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 64, "intermediate_size": 128,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": 8,
                       "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": False},
        text_config={**gemma, "vocab_size": vocab_size, "hidden_size": 96, "intermediate_size": 192},
        expert_config={**gemma, "vocab_size": 1, "hidden_size": 48, "intermediate_size": 96,
                       "pad_token_id": None, "bos_token_id": None, "eos_token_id": None},
        action_dim=2,
        action_horizon=ACTION_HORIZON,
        max_token_len=max_token_len or MAX_TOKEN_LEN[variant],
        image_keys=list(CAMERAS),
    )


def init_model_folder(output: str | Path, variant: str = "pi05", seed: int = 0, fast_vocab: int = 0,
                      max_token_len: int | None = None) -> Path:
    """A randomly initialised small model with its processor (statistics come from `pi train`); `fast_vocab` and
    `max_token_len`: room for knowledge insulation's FAST targets (`task_tokenizer`, `fast_prompt_budget`). The
    weights are those the seed gives without them, the embedding rows of "|" and the reserved tokens drawn after:
    trained without knowledge insulation, the model learns as the recipe's own does (the extra rows stay unused)."""
    from modeling_pi import PiForActionGeneration

    tokenizer = task_tokenizer(fast_vocab)
    max_token_len = max_token_len or MAX_TOKEN_LEN[variant]
    torch.manual_seed(seed)
    model = PiForActionGeneration(small_config(variant, vocab_size=len(task_tokenizer()), max_token_len=max_token_len))
    if fast_vocab:
        wider = PiForActionGeneration(small_config(variant, vocab_size=len(tokenizer), max_token_len=max_token_len))
        weights, embedding = model.state_dict(), "language_model.embed_tokens.weight"
        weights[embedding] = torch.cat([weights[embedding], wider.state_dict()[embedding][len(weights[embedding]):]])
        wider.load_state_dict(weights)
        model = wider
    processor = PiProcessor(PiImageProcessor(size=IMAGE_SIZE), tokenizer, variant=variant, image_keys=list(CAMERAS),
                            max_token_len=max_token_len, action_dim=2, action_horizon=ACTION_HORIZON)
    output = Path(output)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    return output


def train_arguments(model: Path, dataset: Path, output: Path, steps: int, batch_size: int = 32,
                    learning_rate: float = 1e-3, rtc_max_delay: int | None = None, fast_tokenizer: Path | None = None,
                    save_steps: int | None = None) -> list[str]:
    """`pi train` arguments of the recipe: full training (there is nothing pretrained to keep), normalised with
    statistics recomputed in float64 over every frame, as the shipped model was (the demonstrations' stats.json
    holds float32 ones); with `rtc_max_delay`, clean action prefixes of 0 to that many steps, holding the executed
    actions (perturbation included: what the robot does during the delay); with `fast_tokenizer`
    (a FastActionTokenizer folder), knowledge insulation. A checkpoint at the end, or every `save_steps`."""
    camera_map = [f"{key}={camera}" for camera, key in IMAGE_KEYS.items()]
    rtc = [] if rtc_max_delay is None else ["--rtc-max-delay", str(rtc_max_delay), "--rtc-prefix-key", EXECUTED]
    insulation = [] if fast_tokenizer is None else ["--knowledge-insulation", "--fast-tokenizer", str(fast_tokenizer)]
    return ["--model", str(model), "--dataset", str(dataset), "--output", str(output), "--full",
            "--steps", str(steps), "--batch-size", str(batch_size), "--learning-rate", str(learning_rate),
            "--warmup-steps", str(min(200, steps // 10)), "--logging-steps", str(max(1, steps // 50)),
            "--save-steps", str(save_steps or steps), "--recompute-stats", *rtc, *insulation, "--camera-map", *camera_map]


def action_chunks(dataset) -> np.ndarray:
    """Every frame's action chunk [N, H, A] (float64) as `pi train` samples it, the episode's last action repeated
    past its end, read from the action column alone (no image is decoded)."""
    frames = dataset.frames.select_columns(["action", "episode_index"])[:]
    actions, episodes = np.stack(frames["action"]).astype(np.float64), np.asarray(frames["episode_index"])
    ends = dataset.episodes.loc[episodes, "dataset_to_index"].to_numpy()
    steps = np.arange(len(actions))[:, None] + np.arange(dataset.action_horizon)
    return actions[np.minimum(steps, ends[:, None] - 1)]


def fit_fast_tokenizer(dataset_root: Path, fast_vocab: int, variant: str = "pi05") -> tuple[FastActionTokenizer, int]:
    """A FAST tokenizer of `fast_vocab` tokens fitted on the demonstrations' chunks, normalised as `pi train
    --recompute-stats` normalises them for `variant`, and the most tokens it writes for one of them."""
    from training_pi import LeRobotDataset, compute_norm_stats

    dataset = LeRobotDataset(dataset_root, ACTION_HORIZON, {key: camera for camera, key in IMAGE_KEYS.items()})
    processor = PiProcessor(PiImageProcessor(size=IMAGE_SIZE), task_tokenizer(), variant=variant)
    stats = compute_norm_stats(dataset).get("actions", processor.norm_mode)
    chunks = stats.normalize(action_chunks(dataset), processor.norm_mode, processor.conventions)
    fast = FastActionTokenizer.fit(chunks, vocab_size=fast_vocab)
    return fast, max(map(len, fast(chunks)))


def fast_prompt_budget(longest_fast: int, variant: str = "pi05") -> int:
    """max_token_len for knowledge insulation: the longest prompt of the task, the longest chunk's FAST ids, "|" and
    EOS. π0.5's prompt carries the state's bins, one token each, but a normalised state below -1 (1% of the frames
    lie below the q01 the statistics normalise with) is written "-1", two tokens: both dims so is the longest."""
    tokenizer = task_tokenizer()
    prompt = max(sum(tokenize_prompt(tokenizer, variant, prompt_for(color), 64, state=np.full(2, -2.0)).attention_mask)
                 for color in COLORS)
    return prompt + longest_fast + 2


SHIPPED_FILES = ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
                 "loss_curve.png")


def ship(trained: Path, destination: Path, provenance: str) -> Path:
    """The trained folder's model, processor and loss curve, with a card saying how it was made (naming it
    `demo_pi/<destination's name>`); not its checkpoints, and not the remote code (the package that ships it has
    the code)."""
    if destination.exists():
        print(f"--ship: replacing {destination}")
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for name in SHIPPED_FILES:
        shutil.copy(trained / name, destination / name)
    config = json.loads((destination / "config.json").read_text())
    config.pop("auto_map", None)
    (destination / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    processor_config = json.loads((destination / "processor_config.json").read_text())
    processor_config.pop("auto_map", None)
    (destination / "processor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n")
    shipped_card(destination, provenance, f"demo_pi/{destination.name}").save(destination / "README.md")
    return destination


def shipped_card(folder: Path, provenance: str, name: str = "demo_pi/model"):
    """The shipped folder's model card: its examples name it as `name` (they run from the repository's root) and
    give the task's own instruction; it carries no code of its own, and a model trained from scratch has no
    license or base model to name."""
    from modeling_pi import PiForActionGeneration
    from model_cards import render_model_card

    model, processor = PiForActionGeneration.from_pretrained(folder), PiProcessor.from_pretrained(folder)
    return render_model_card(model.config, model.num_parameters(), name, provenance,
                             norm_stats=processor.norm_stats.to_dict(), processor=processor, remote_code=False,
                             example_prompt=prompt_for(next(iter(COLORS))))


def train_with(arguments: list[str]) -> int:
    """`pi train` with these arguments, run through training_pi's own parser and entry point (not the CLI)."""
    from training_pi import train

    return train.run(train.add_arguments(argparse.ArgumentParser(prog="pi train")).parse_args(arguments))


def main(argv: list[str] | None = None) -> int:
    from model_cards import TITLES
    from pi_cli import HelpWithDefaults

    from .demo import evaluate

    parser = argparse.ArgumentParser(prog="python -m demo_pi.recipe", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpWithDefaults)
    parser.add_argument("--output", required=True, help="run folder (demonstrations/, init/, model/); refused if it "
                                                        "holds anything, unless --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="delete a non-empty --output first")
    parser.add_argument("--variant", choices=("pi05", "pi0"), default="pi05", help="the architecture")
    parser.add_argument("--episodes", type=int, default=2000, help="expert demonstrations")
    parser.add_argument("--perturbation", type=float, default=0.3, help="noise on the demonstrations' executed actions (× max speed)")
    parser.add_argument("--steps", type=int, default=4000, help="training steps")
    parser.add_argument("--batch-size", type=int, default=32, help="frames per step")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of training")
    parser.add_argument("--eval-episodes", type=int, default=100, help="held-out episodes scored after training")
    parser.add_argument("--ship", help="copy the trained policy here with its model card, replacing what is there (the "
                                       "package's: demo_pi/model)")
    parser.add_argument("--init", help="start from this trained π folder (e.g. demo_pi/model) instead of a fresh one")
    parser.add_argument("--rtc-max-delay", type=int, metavar="N",
                        help="real-time chunking learnt in training: clean action prefixes of 0 to N steps")
    parser.add_argument("--knowledge-insulation", action="store_true",
                        help=f"π0.5: train with knowledge insulation, on a FAST tokenizer fitted on the demonstrations "
                             f"(of --fast-vocab tokens, {DEFAULT_FAST_VOCAB} unless given)")
    parser.add_argument("--fast-vocab", type=int, metavar="N",
                        help="fit a FAST tokenizer of N tokens and size the vocabulary and prompt for it; without "
                             "--knowledge-insulation, the same model trained without it (the baseline)")
    args = parser.parse_args(argv)
    fast_vocab = args.fast_vocab or (DEFAULT_FAST_VOCAB if args.knowledge_insulation else 0)
    if fast_vocab and (args.variant != "pi05" or args.init):
        parser.error("--knowledge-insulation and --fast-vocab size a fresh π0.5 (--variant pi05, no --init) for FAST targets")
    for flag, value in (("--episodes", args.episodes), ("--eval-episodes", args.eval_episodes)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    run = Path(args.output)
    if run.exists() and (not run.is_dir() or any(run.iterdir())):
        if not args.overwrite:
            parser.error(f"--output {run} is not an empty folder (an earlier run?); pass --overwrite to delete it, or "
                         "choose another")
        print(f"--overwrite: deleting {run}")
        shutil.rmtree(run) if run.is_dir() else run.unlink()
    start = time.perf_counter()
    seeds = range(TRAIN_SEEDS_START, TRAIN_SEEDS_START + args.episodes)
    dataset = write_demonstrations(run / "demonstrations", seeds, args.perturbation)
    fast_tokenizer = None
    if fast_vocab:
        fast, longest = fit_fast_tokenizer(dataset, fast_vocab, args.variant)
        fast_tokenizer = fast.save_pretrained(run / "fast_tokenizer")
        init = init_model_folder(run / "init", args.variant, args.seed, fast_vocab, fast_prompt_budget(longest, args.variant))
    else:
        init = Path(args.init) if args.init else init_model_folder(run / "init", args.variant, args.seed)
    code = train_with(train_arguments(init, dataset, run / "model", args.steps, args.batch_size, args.learning_rate,
                                      args.rtc_max_delay, fast_tokenizer if args.knowledge_insulation else None))
    if code:
        return code
    minutes = (time.perf_counter() - start) / 60
    successes = evaluate(run / "model", range(HELD_OUT_SEEDS_START, HELD_OUT_SEEDS_START + args.eval_episodes))
    print(f"recipe: {minutes:.1f} min (demonstrations and training); held-out success {successes}/{args.eval_episodes}")
    if args.ship:
        variant = json.loads((run / "model" / "config.json").read_text())["variant"]
        origin = f"fine-tuned from `{args.init}`" if args.init else "trained from scratch"
        insulation = (" with knowledge insulation (`--knowledge-insulation`: the backbone learns the chunks' FAST tokens, "
                      "the action expert reads it through a stop-gradient)") if args.knowledge_insulation else ""
        rtc = (f" with clean action prefixes of 0 to {args.rtc_max_delay} steps holding the executed actions (`--rtc-max-delay "
               f"{args.rtc_max_delay} --rtc-prefix-key {EXECUTED}`: real-time chunking fixes the first actions of a chunk "
               "instead of guiding them)") if args.rtc_max_delay else ""
        provenance = (f"This is the {TITLES[variant]} architecture at toy size (SigLIP, Gemma and the action expert shrunk), "
                      f"{origin} on the built-in tabletop task by `python -m demo_pi.recipe`: {args.episodes} "
                      f"expert demonstrations (perturbation {args.perturbation}), {args.steps} steps of `pi train --full` (batch {args.batch_size}, "
                      f"learning rate {args.learning_rate}){rtc}{insulation}, {minutes:.1f} minutes on a 2-core CPU; it reaches the named "
                      f"block in {successes} of {args.eval_episodes} held-out episodes.")
        print(f"shipped {ship(run / 'model', Path(args.ship), provenance)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

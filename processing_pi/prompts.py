"""Prompts as the π models read them, tokenized with PaliGemma's tokenizer.

- π0: BOS + clean(prompt) + "\\n".
- π0.5: BOS + "Task: {clean(prompt)}, State: {bins};\\nAction: "; without the state in the prompt (openpi's
  `discrete_state_input=False`, e.g. its LIBERO π0.5), π0's format.
- π0-FAST: prefix BOS + "Task: {fast_clean(prompt)}, State: {bins};\\n" (bidirectional); for training,
  postfix "Action: " + FAST ids mapped into the vocabulary + "|" + EOS (causal, the loss targets).
- π0.5 trained with knowledge insulation: its prompt, then the same FAST ids + "|" + EOS as the postfix.

clean = strip, "_" -> " ", "\\n" -> " "; fast_clean = lower-case, strip, "_" -> " " (newlines kept, as
the reference does); bins = the normalised state discretised into 256 bins over
[-1, 1]. Sequences are right-padded with 0 to `max_len`.

Too long a prompt: where a cut would lose what the model acts on — the state and "Action: " of π0.5,
π0-FAST's prefix (its state), or every training target of π0-FAST — it is a `PromptTooLong` error; where
it loses only the end of the task text (π0) or some training targets, it is cut with a warning that says
how many tokens went.

LeRobot's ports (`conventions="lerobot"`) write the same formats with three differences, which a policy
trained there has learnt: π0 reads the task as it is, with "\\n" appended unless it ends with one
(no cleaning); π0-FAST's task is cleaned as π0.5's is (not lower-cased); and π0-FAST's prompt, padded to
`max_len`, is followed by one more BOS, which LeRobot appends before decoding and puts at the head of
the training targets (the postfix then holds up to `LEROBOT_ACTION_TOKENS` tokens of its own).

The tokenizer itself is `tokenizers`' BPE built by transformers' SentencePiece converter from the
`.model` file openpi ships; only the proto is read, so neither sentencepiece nor the slow tokenizer is
needed.
"""

import logging
import os
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

logger = logging.getLogger(__name__)

STATE_BINS = np.linspace(-1, 1, 256 + 1)[:-1]
FAST_SKIP_TOKENS = 128  # the reference keeps the last 128 ids of the vocabulary clear of FAST tokens
LEROBOT_ACTION_TOKENS = 256  # LeRobot's π0-FAST `max_action_tokens`: the length of its training targets


def tokenizer_from_sentencepiece(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """A SentencePiece `.model` (e.g. openpi's paligemma_tokenizer.model) as a transformers tokenizer, identical ids."""
    from google.protobuf.message import DecodeError  # here, not at the top: remote code loads without protobuf

    proto = import_protobuf().ModelProto()
    with open(path, "rb") as f:
        data = f.read()
    try:
        proto.ParseFromString(data)
    except DecodeError as err:
        raise ValueError(f"{path}: not a SentencePiece model ({err}).") from err
    if not proto.pieces:
        raise ValueError(f"{path}: not a SentencePiece model (it holds no pieces).")
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    spec = proto.trainer_spec
    piece = lambda i: proto.pieces[i].piece if 0 <= i < len(proto.pieces) else None  # noqa: E731
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=piece(spec.bos_id),
        eos_token=piece(spec.eos_id),
        pad_token=piece(spec.pad_id),
        unk_token=piece(spec.unk_id),
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )


def clean_prompt(prompt: str) -> str:
    return prompt.strip().replace("_", " ").replace("\n", " ")


def fast_clean_prompt(prompt: str) -> str:
    return prompt.lower().strip().replace("_", " ")


def lerobot_pi0_prompt(prompt: str) -> str:
    return prompt if prompt.endswith("\n") else prompt + "\n"


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Normalised state -> bin indices: 0 to 255 across [-1, 1], as openpi bins it (255 above 1, -1 below -1)."""
    return np.digitize(np.asarray(state), bins=STATE_BINS) - 1


def fast_ids_to_vocab(fast_ids, vocab_size: int) -> list[int]:
    """FAST token ids -> ids at the end of the language vocabulary (and back: the map is its own inverse).
    `vocab_size` is the tokenizer's own vocabulary (`tokenizer.vocab_size`, as openpi and LeRobot count it), without
    tokens added after it such as transformers' PaliGemma `<image>`."""
    return [vocab_size - 1 - FAST_SKIP_TOKENS - int(i) for i in fast_ids]


@dataclass
class PromptTokens:
    """One tokenized prompt, padded to `max_len`: ids, attention mask, token roles (0 prefix, 1 postfix), loss targets."""

    input_ids: list[int]
    attention_mask: list[bool]
    token_type_ids: list[int]
    loss_mask: list[bool]


def _encode(tokenizer, text: str, literal: bool = True) -> list[int]:
    """`text` -> ids. `literal`: as SentencePiece (openpi) reads text, where "</s>" or "<pad>" typed into a task is
    text, not the control token; LeRobot's transformers tokenizer matches them."""
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=literal)


class PromptTooLong(ValueError):
    """A prompt that `max_token_len` would cut where the model reads the state or its targets."""


def _fit(prefix: list[int], max_len: int, variant: str, postfix: list[int] = ()) -> None:
    """Refuses a cut that loses the state or every target; warns about one that loses less."""
    if len(prefix) > max_len and variant != "pi0":
        raise PromptTooLong(f"The {variant} prompt is {len(prefix)} tokens, more than max_token_len={max_len}: cutting "
                            "it would drop the robot state from it. Shorten the task or raise max_token_len.")
    if postfix and len(prefix) >= max_len:
        raise PromptTooLong(f"The {variant} prompt takes all {max_len} tokens of max_token_len, leaving none of the "
                            f"{len(postfix)} training targets. Shorten the task or raise max_token_len.")
    cut = len(prefix) + len(postfix) - max_len
    if cut > 0:
        what = (f"{cut} of the {len(postfix)} training target tokens" if postfix
                else f"the last {cut} tokens of the prompt (the newline that closes the task first)")
        logger.warning("Prompt longer than max_token_len=%d: %s cut off.", max_len, what)


def _pad(prefix: list[int], postfix: list[int], max_len: int) -> PromptTokens:
    ids = (prefix + postfix)[:max_len]
    roles = ([0] * len(prefix) + [1] * len(postfix))[:max_len]
    padding = max_len - len(ids)
    return PromptTokens(
        input_ids=ids + [0] * padding,
        attention_mask=[True] * len(ids) + [False] * padding,
        token_type_ids=roles + [0] * padding,
        loss_mask=[role == 1 for role in roles] + [False] * padding,
    )


def _fast_postfix(tokenizer, fast_ids: list[int]) -> list[int]:
    """A chunk's FAST ids mapped into the vocabulary, then "|" and EOS: the training targets after "Action: "."""
    return fast_ids_to_vocab(fast_ids, tokenizer.vocab_size) + _encode(tokenizer, "|") + [tokenizer.eos_token_id]


def tokenize_prompt(
    tokenizer,
    variant: str,
    prompt: str,
    max_len: int,
    state: np.ndarray | None = None,
    fast_ids: list[int] | None = None,
    state_in_prompt: bool | None = None,
    conventions: str = "openpi",
) -> PromptTokens:
    """The variant's prompt format; `state` is the normalised robot state (π0.5, π0-FAST), `fast_ids` the FAST
    ids of the target chunk (π0-FAST training; None for inference). `state_in_prompt` (openpi's
    `discrete_state_input`; default: all but π0) picks the flow variants' format: without the state, π0's.
    `conventions` "lerobot" writes the prompts LeRobot's ports write (module docstring)."""
    bos = [tokenizer.bos_token_id]
    lerobot = conventions == "lerobot"
    if state_in_prompt is None:
        state_in_prompt = variant != "pi0"
    if variant != "pi0_fast" and not state_in_prompt:
        if fast_ids is not None:
            raise ValueError("FAST training targets (knowledge insulation) follow π0.5's \"Action: \", a prompt with the state in it.")
        text = lerobot_pi0_prompt(prompt) if lerobot else clean_prompt(prompt) + "\n"
        ids = bos + _encode(tokenizer, text, literal=not lerobot)
        _fit(ids, max_len, "pi0")
        return _pad(ids, [], max_len)
    if state is None:
        raise ValueError(f"The {variant} prompt carries the robot state: pass `state`.")
    bins = " ".join(map(str, discretize_state(state)))
    if variant != "pi0_fast":  # π0.5; with `fast_ids`, knowledge insulation's targets follow "Action: "
        ids = bos + _encode(tokenizer, f"Task: {clean_prompt(prompt)}, State: {bins};\nAction: ", literal=not lerobot)
        postfix = [] if fast_ids is None else _fast_postfix(tokenizer, fast_ids)
        _fit(ids, max_len, variant, postfix)
        return _pad(ids, postfix, max_len)
    task = clean_prompt(prompt) if lerobot else fast_clean_prompt(prompt)
    prefix = bos + _encode(tokenizer, f"Task: {task}, State: {bins};\n", literal=not lerobot)
    postfix = [] if fast_ids is None else _encode(tokenizer, "Action: ") + _fast_postfix(tokenizer, fast_ids)
    if not lerobot:
        _fit(prefix, max_len, variant, postfix)
        return _pad(prefix, postfix, max_len)
    _fit(prefix, max_len, variant)
    if fast_ids is None:  # the extra BOS closes the prefix, after its padding
        padded = _pad(prefix, [], max_len)
        return PromptTokens(padded.input_ids + bos, padded.attention_mask + [True], [0] * (max_len + 1), [False] * (max_len + 1))
    postfix = bos + postfix
    _fit([], LEROBOT_ACTION_TOKENS, variant, postfix)
    tokens = _pad(prefix, postfix[:LEROBOT_ACTION_TOKENS], max_len + LEROBOT_ACTION_TOKENS)
    tokens.loss_mask[len(prefix)] = False  # the BOS is read, not predicted
    return tokens

"""FAST: action chunks as discrete tokens, the way π0-FAST reads and writes actions.

Per chunk [H, D]: an orthonormal DCT-II over time, coefficients scaled and rounded
(round(scale·c)), flattened time-major, shifted by `-min_token` so that every value is a non-negative
code point, written as a string of those characters and compressed by a byte-level BPE (HF
`tokenizers`). Decoding inverts each step; a sequence that does not decode to exactly H·D
coefficients yields zeros and is reported invalid. LeRobot reads such a sequence leniently instead (ids
past the vocabulary skipped, the coefficients cut or zero-padded to H·D): `decode(lenient=True)` returns
that reading, still reported invalid.

Written here because the published processor (`physical-intelligence/fast`) is remote code: loading
it runs Python from the Hub. This module reads the same folder layout (`processor_config.json`,
`tokenizer.json`) natively, executes nothing from it, and can fit a new tokenizer on a dataset.
"""

import json
import logging
import os
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

logger = logging.getLogger(__name__)

PROCESSOR_CONFIG = "processor_config.json"
TOKENIZER_FILE = "tokenizer.json"
_SURROGATES = 0xD800  # the first code point that is no character: codes must stay below it


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix [n, n] (float64): `M @ x` is scipy's `dct(x, norm="ortho")`, `M.T @ X` its inverse."""
    k = np.arange(n)[:, None]
    t = np.arange(n)[None, :]
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * t + 1) * k / (2 * n))
    matrix[0] /= np.sqrt(2.0)
    return matrix


class FastActionTokenizer:
    """DCT + rounding + BPE tokenizer of action chunks (π0-FAST's action vocabulary).

    `tokenizer(chunks)` -> one id list per chunk; `tokenizer.decode(ids, time_horizon=H, action_dim=D)`
    -> (actions [B, H, D], valid [B]).
    """

    def __init__(self, bpe: Tokenizer, scale: float = 10.0, vocab_size: int = 1024, min_token: int = 0,
                 time_horizon: int | None = None, action_dim: int | None = None):
        self.bpe = bpe
        self.scale = float(scale)
        self.vocab_size = int(vocab_size)
        self.min_token = int(min_token)
        self.time_horizon = time_horizon
        self.action_dim = action_dim

    # ---- loading and saving -------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, **hub_kwargs) -> "FastActionTokenizer":
        """A local folder or a Hub repo in `physical-intelligence/fast`'s layout; no code is run from it."""
        folder = Path(path_or_repo)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(path_or_repo), allow_patterns=[PROCESSOR_CONFIG, TOKENIZER_FILE], **hub_kwargs))
        for name in (PROCESSOR_CONFIG, TOKENIZER_FILE):
            if not (folder / name).is_file():
                raise ValueError(f"{path_or_repo} is not a FAST tokenizer folder: {name} is missing.")
        config = json.loads((folder / PROCESSOR_CONFIG).read_text())
        missing = [key for key in ("scale", "vocab_size", "min_token") if key not in config]
        if missing:
            raise ValueError(f"{folder / PROCESSOR_CONFIG} lacks {', '.join(missing)}.")
        return cls(
            Tokenizer.from_file(str(folder / TOKENIZER_FILE)),
            scale=config["scale"],
            vocab_size=config["vocab_size"],
            min_token=config["min_token"],
            time_horizon=config.get("time_horizon"),
            action_dim=config.get("action_dim"),
        )

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"scale": self.scale, "vocab_size": self.vocab_size, "min_token": self.min_token,
                  "time_horizon": self.time_horizon, "action_dim": self.action_dim}
        (folder / PROCESSOR_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        self.bpe.save(str(folder / TOKENIZER_FILE))
        return folder

    # ---- encoding -----------------------------------------------------------------------------

    def _coefficients(self, chunks: np.ndarray) -> np.ndarray:
        """[B, H, D] -> rounded, scaled DCT coefficients [B, H·D] (time-major), as integers."""
        coefficients = np.einsum("kt,btd->bkd", dct_matrix(chunks.shape[1]), chunks.astype(np.float64))
        return np.around(coefficients * self.scale).astype(np.int64).reshape(len(chunks), -1)

    def __call__(self, chunks) -> list[list[int]]:
        chunks = np.asarray(chunks, dtype=np.float64)
        if chunks.ndim == 2:
            chunks = chunks[None]
        if chunks.ndim != 3 or 0 in chunks.shape:
            raise ValueError(f"FAST encodes action chunks [H, D] or [B, H, D], got shape {chunks.shape}.")
        if not np.isfinite(chunks).all():
            raise ValueError("Action chunks contain NaN or infinite values.")
        codes = self._coefficients(chunks) - self.min_token
        if codes.max() >= _SURROGATES:
            raise ValueError(f"An action chunk's scaled DCT coefficient (×{self.scale:g}) reaches "
                             f"{codes.max() + self.min_token}, more than FAST can write as a character: the actions are "
                             "far outside the range the tokenizer was fit on. Normalise them first.")
        texts = ["".join(map(chr, row)) for row in np.maximum(codes, 0)]
        ids = [encoding.ids for encoding in self.bpe.encode_batch(texts)]
        decoded = self.bpe.decode_batch(ids, skip_special_tokens=False)
        altered = (codes < 0).any(axis=1) | [len(text) != codes.shape[1] for text in decoded]
        if altered.any():  # openpi tokenizes them so too, without a word
            logger.warning("%d of %d action chunk(s) do not survive FAST tokenization: coefficients below the tokenizer's "
                           "min_token are raised to it, and codes it has no token for are dropped, so their tokens decode "
                           "to other actions or none. Normalise the actions into the range the tokenizer was fit on.",
                           altered.sum(), len(codes))
        return ids

    # ---- decoding -----------------------------------------------------------------------------

    def decode(self, id_lists, *, time_horizon: int | None = None, action_dim: int | None = None, lenient: bool = False):
        """id lists -> (actions [B, H, D] float32, valid [B] bool): valid where a sequence decodes to exactly H·D
        coefficients. Invalid sequences give zeros; `lenient` reads them as LeRobot does instead (module
        docstring), still flagged invalid."""
        horizon = time_horizon or self.time_horizon
        dim = action_dim or self.action_dim
        if not horizon or not dim:
            raise ValueError("FAST decoding needs time_horizon and action_dim (the folder does not fix them).")
        inverse = dct_matrix(horizon).T
        actions = np.zeros((len(id_lists), horizon, dim), dtype=np.float32)
        valid = np.zeros(len(id_lists), dtype=bool)
        for i, ids in enumerate(id_lists):
            ids = list(map(int, ids))
            coefficients = self._decode_coefficients(ids, horizon * dim)
            valid[i] = coefficients is not None
            if not valid[i]:
                logger.warning("FAST sequence %d does not decode to a %dx%d chunk; returning %s, flagged invalid.", i,
                               horizon, dim, "LeRobot's reading of it" if lenient else "zeros")
                coefficients = self._lenient_coefficients(ids, horizon * dim) if lenient else None
            if coefficients is not None:
                actions[i] = inverse @ (coefficients.reshape(horizon, dim) / self.scale)
        return actions, valid

    def _decode_coefficients(self, ids: list[int], count: int) -> np.ndarray | None:
        if any(not 0 <= token < self.bpe.get_vocab_size() for token in ids):
            return None
        text = self.bpe.decode(ids, skip_special_tokens=False)
        if "\ufffd" in text:  # bytes that are not UTF-8: the ids were cut inside a character
            return None
        codes = np.fromiter(map(ord, text), dtype=np.int64, count=len(text))
        return codes + self.min_token if len(codes) == count else None

    def _lenient_coefficients(self, ids: list[int], count: int) -> np.ndarray | None:
        if any(token < 0 for token in ids):
            return None
        text = self.bpe.decode(ids, skip_special_tokens=False)  # ids past the vocabulary are skipped
        codes = np.fromiter(map(ord, text), dtype=np.int64, count=len(text))[:count]
        return np.pad(codes + self.min_token, (0, count - len(codes)))

    # ---- fitting ------------------------------------------------------------------------------

    @classmethod
    def fit(cls, chunks, vocab_size: int = 1024, scale: float = 10.0) -> "FastActionTokenizer":
        """Trains a FAST tokenizer on a dataset's chunks [N, H, D] (the FAST paper fits one per dataset)."""
        chunks = np.asarray(chunks, dtype=np.float64)
        if chunks.ndim != 3 or 0 in chunks.shape:
            raise ValueError(f"fit takes action chunks [N, H, D], got shape {chunks.shape}.")
        probe = cls(Tokenizer(models.BPE()), scale=scale, vocab_size=vocab_size)
        coefficients = probe._coefficients(chunks)
        min_token = int(coefficients.min())
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        texts = ("".join(map(chr, row - min_token)) for row in coefficients)
        bpe.train_from_iterator(texts, trainer=trainer)
        return cls(bpe, scale=scale, vocab_size=vocab_size, min_token=min_token,
                   time_horizon=chunks.shape[1], action_dim=chunks.shape[2])

"""FastActionTokenizer against the published FAST processor's outputs (fixtures/processor, `fast.*`)."""

import json
import logging

import numpy as np
import pytest
import scipy.fft
from safetensors.numpy import load_file

from conftest import FIXTURES
from processing_pi import FastActionTokenizer
from processing_pi.fast_action_tokenizer import dct_matrix

FAST_FOLDER = FIXTURES / "processor" / "fast_tokenizer"
IO = load_file(FIXTURES / "processor" / "processor_io.safetensors")
HORIZON, DIM = IO["fast.test_chunks"].shape[1:]


@pytest.fixture(scope="module")
def fast():
    return FastActionTokenizer.from_pretrained(FAST_FOLDER)


def _fixture_ids():
    return [[int(i) for i in row if i >= 0] for row in IO["fast.ids"]]


def test_encoding_gives_the_reference_ids(fast):
    assert fast(IO["fast.test_chunks"]) == _fixture_ids()
    assert fast(IO["fast.test_chunks"][0]) == _fixture_ids()[:1]  # a single [H, D] chunk


def test_decoding_gives_the_reference_actions(fast):
    actions, valid = fast.decode(_fixture_ids(), time_horizon=HORIZON, action_dim=DIM)
    assert valid.all() and actions.shape == IO["fast.decoded"].shape
    np.testing.assert_allclose(actions, IO["fast.decoded"], atol=1e-6, rtol=0)


def test_a_truncated_sequence_decodes_to_zeros_and_is_reported_invalid(fast, caplog, capsys):
    truncated = IO["fast.truncated_ids"].tolist()
    with caplog.at_level(logging.WARNING):
        actions, valid = fast.decode([truncated, _fixture_ids()[0]], time_horizon=HORIZON, action_dim=DIM)
    assert valid.tolist() == [False, True]
    np.testing.assert_array_equal(actions[0], IO["fast.truncated_decoded"][0])
    assert not actions[0].any() and actions[1].any()
    assert "does not decode" in caplog.text
    assert capsys.readouterr().out == ""  # quietly: a logged warning, never a print


@pytest.mark.parametrize("ids", [[-1, 5], [10**6], [], [5] * 3])
def test_out_of_range_or_miscounted_ids_are_invalid(fast, ids):
    actions, valid = fast.decode([ids], time_horizon=HORIZON, action_dim=DIM)
    assert not valid[0] and not actions.any()


@pytest.mark.parametrize("ids", [[5] * 3, [10**6] + _fixture_ids()[0]])
def test_lenient_decoding_reads_what_it_can_and_still_reports_it_invalid(fast, ids):
    """LeRobot's reading of a sequence that is no H×D chunk (cut or zero-padded, ids past the vocabulary skipped)
    is returned for parity, never passed off as a prediction."""
    actions, valid = fast.decode([ids], time_horizon=HORIZON, action_dim=DIM, lenient=True)
    assert not valid[0] and actions[0].any()
    actions, valid = fast.decode(_fixture_ids(), time_horizon=HORIZON, action_dim=DIM, lenient=True)
    assert valid.all()
    np.testing.assert_allclose(actions, IO["fast.decoded"], atol=1e-6, rtol=0)


def test_chunks_whose_tokens_decode_to_other_actions_are_named(fast, caplog):
    """Coefficients below `min_token` (raised to it) or with no token (dropped) are tokenized as openpi does, with a
    warning; a value too large to write as a character is refused."""
    fit = IO["fast.test_chunks"]
    with caplog.at_level(logging.WARNING):
        fast(fit)
    assert "do not survive" not in caplog.text
    for far in (-50.0, 50.0):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            ids = fast(np.full((HORIZON, DIM), far))
        assert "1 of 1 action chunk(s) do not survive" in caplog.text
        actions, valid = fast.decode(ids, time_horizon=HORIZON, action_dim=DIM)
        assert not (valid[0] and np.allclose(actions, far, rtol=0.01))
    with pytest.raises(ValueError, match="far outside the range"):
        fast(np.full((HORIZON, DIM), 1e5))


def test_dct_equals_scipys_orthonormal_dct_ii_and_iii():
    x = np.random.default_rng(0).normal(size=(HORIZON, DIM))
    for n in (1, 7, HORIZON, 50):
        x = np.random.default_rng(n).normal(size=(n, 3))
        np.testing.assert_allclose(dct_matrix(n) @ x, scipy.fft.dct(x, type=2, axis=0, norm="ortho"), atol=1e-12)
        np.testing.assert_allclose(dct_matrix(n).T @ x, scipy.fft.dct(x, type=3, axis=0, norm="ortho"), atol=1e-12)


def test_save_pretrained_round_trips_the_layout(fast, tmp_path):
    fast.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert {"scale", "vocab_size", "min_token"} <= config.keys()
    reloaded = FastActionTokenizer.from_pretrained(tmp_path)
    assert reloaded(IO["fast.test_chunks"]) == _fixture_ids()


def test_loading_never_runs_code_from_the_folder(tmp_path):
    """The published folder names remote code in `auto_map`; we read only the JSON files."""
    for name in ("processor_config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((FAST_FOLDER / name).read_bytes())
    marker = tmp_path / "executed"
    (tmp_path / "processing_action_tokenizer.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    FastActionTokenizer.from_pretrained(tmp_path)(IO["fast.test_chunks"])
    assert not marker.exists()


def test_a_folder_without_the_files_is_refused(tmp_path):
    with pytest.raises(ValueError, match="tokenizer.json"):
        (tmp_path / "processor_config.json").write_text("{}")
        FastActionTokenizer.from_pretrained(tmp_path)


def test_bad_chunks_are_refused(fast):
    with pytest.raises(ValueError, match="NaN"):
        fast(np.full((HORIZON, DIM), np.nan))
    with pytest.raises(ValueError, match="shape"):
        fast(np.zeros(5))
    with pytest.raises(ValueError, match="time_horizon"):
        fast.decode([[1]])


def test_fit_learns_a_compressing_tokenizer_that_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 16)[None, :, None]
    chunks = np.sin(2 * np.pi * (t * rng.uniform(0.5, 2, (200, 1, 4)) + rng.uniform(0, 1, (200, 1, 4))))
    fast = FastActionTokenizer.fit(chunks, vocab_size=300, scale=10)
    ids = fast(chunks[:20])
    assert all(len(row) < 16 * 4 for row in ids)  # BPE merges: fewer tokens than coefficients
    assert max(max(row) for row in ids) < 300
    actions, valid = fast.decode(ids)  # horizon and dim remembered from fitting
    assert valid.all()
    # rounding error of each coefficient is at most 0.5/scale; the orthonormal inverse keeps it per column
    assert np.abs(actions - chunks[:20]).max() <= 0.05 * np.sqrt(16)
    fast.save_pretrained(tmp_path)
    assert FastActionTokenizer.from_pretrained(tmp_path)(chunks[:20]) == ids

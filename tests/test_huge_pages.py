"""The huge-pages benchmark runs each setting in processes of its own and summarises them per model."""

import json

import pytest

from benchmarks import huge_pages


def _process(setting, pair, ours, theirs, faults=(100, 100)):
    """A process's results: rounds of each model (seconds), their ratios in the same rounds, page faults."""
    return {"setting": setting, "pair": pair, "results": {
        "ours": {"rounds": ours, "ratios": [a / b for a, b in zip(ours, theirs)], "faults": list(faults)},
        "transformers": {"rounds": theirs, "ratios": [1.0] * len(theirs), "faults": list(faults)}}}


def test_the_summary_gives_medians_ratios_in_the_same_rounds_and_each_pair_s_gain():
    processes = [
        _process("off", 0, ours=[10, 12, 11], theirs=[12, 12, 12], faults=(900, 1000)),
        _process("on", 0, ours=[8, 9, 10], theirs=[10, 10, 10], faults=(30, 40)),
        _process("on", 1, ours=[20, 20, 20], theirs=[25, 25, 25], faults=(50, 50)),
        _process("off", 1, ours=[40, 40, 40], theirs=[40, 40, 40]),  # a slower machine in the second pair
    ]
    rows = {(row["setting"], row["model"]): row for row in huge_pages.summary(processes)}
    on = rows["on", "ours"]
    assert on["chunk_s"] == pytest.approx(15)  # median of 8, 9, 10, 20, 20, 20
    assert on["ratio_to_transformers"] == pytest.approx(0.8)  # median of 0.8, 0.9, 1.0, 0.8, 0.8, 0.8
    assert on["faults"] == 45
    assert on["ratio_to_off"] == pytest.approx((9 / 11 + 20 / 40) / 2)  # each pair against its own "off"
    assert rows["off", "ours"]["ratio_to_off"] == 1.0 and rows["off", "transformers"]["ratio_to_transformers"] == 1.0
    assert rows["on", "transformers"]["ratio_to_off"] == pytest.approx((10 / 12 + 25 / 40) / 2)
    assert "| 1 | ours | 15.00 | 0.80 | 45 | 0.66 |" in huge_pages.table(list(rows.values()))


@pytest.mark.slow
def test_each_setting_runs_in_its_own_process_whatever_the_caller_s_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")  # the "off" processes must not inherit it
    rows = huge_pages.main(["--size", "tiny", "--processes", "2", "--repeats", "1", "--steps", "2",
                            "--json", str(tmp_path / "hp.json")])
    processes = json.loads((tmp_path / "hp.json").read_text())["processes"]
    assert [(p["setting"], p["pair"]) for p in processes] == [("off", 0), ("on", 0), ("on", 1), ("off", 1)]
    assert [p["results"]["env"] for p in processes] == [None, "1", "1", None]
    for process in processes:
        for model in huge_pages.MODELS:
            results = process["results"][model]
            assert len(results["rounds"]) == len(results["ratios"]) == len(results["faults"]) == 1
            assert results["rounds"][0] > 0 and results["faults"][0] >= 0
    assert [(row["setting"], row["model"]) for row in rows] == [
        ("off", "ours"), ("off", "transformers"), ("on", "ours"), ("on", "transformers")]
    assert "| THP_MEM_ALLOC_ENABLE | model |" in capsys.readouterr().out

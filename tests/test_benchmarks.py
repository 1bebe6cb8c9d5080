"""The parts of benchmarks/ that decide what a figure means: which questions are timed, and how chunks add up."""

import importlib.util
from pathlib import Path

import pytest
from conftest import SHARED, require

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench_eval(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as a script: its folder (benchmarks/common.py) first
    spec = importlib.util.spec_from_file_location("bench_eval", BENCHMARKS / "bench_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def question(dialogue: str, turn: int, slot: str) -> dict:
    return {"id": f"{dialogue}/{turn}/{slot}", "dialogue_id": dialogue, "turn": turn}


def test_turn_chunks_keep_whole_turns_in_order(bench_eval):
    questions = [question(d, t, s) for d, turns in (("A", 3), ("B", 2)) for t in range(turns) for s in "xyz"]
    chunks = bench_eval.turn_chunks(questions, 2)
    assert [len(c) for c in chunks] == [6, 6, 3]
    assert [q for c in chunks for q in c] == questions
    assert [{(q["dialogue_id"], q["turn"]) for q in c} for c in chunks] == [
        {("A", 0), ("A", 1)},
        {("A", 2), ("B", 0)},
        {("B", 1)},
    ]


def test_add_runs_sums_time_and_weights_the_mean_prompt(bench_eval):
    def run(questions, seconds, tokens, prompt, peak, outputs):
        return {
            "chunks": [{"questions": questions}],
            "questions": questions, "batch_size": 30, "seconds": seconds, "questions_per_s": questions / seconds,
            "generated_tokens": tokens, "tokens_per_s": tokens / seconds, "mean_prompt_tokens": prompt,
            "peak_memory_mib": peak, "outputs": outputs,
        }  # fmt: skip

    first, second = run(30, 10.0, 300, 100.0, 900.0, {"a": "1"}), run(90, 20.0, 600, 200.0, 800.0, {"b": "2"})
    total = bench_eval.add_runs(first, second)
    assert total["questions"] == 120
    assert total["questions_per_s"] == pytest.approx(120 / 30.0)
    assert total["tokens_per_s"] == pytest.approx(900 / 30.0)
    assert total["mean_prompt_tokens"] == pytest.approx((30 * 100 + 90 * 200) / 120)
    assert total["peak_memory_mib"] == 900.0
    assert total["outputs"] == {"a": "1", "b": "2"}
    assert total["chunks"] == [{"questions": 30}, {"questions": 90}]


def test_random_turn_sample_takes_whole_dialogues(bench_eval):
    """A random sample holds every turn of the dialogues it draws (the split's mix of history lengths), and its
    seed decides it; the first-dialogues sample is exactly the turns asked."""
    require(SHARED / "data" / "multiwoz21" / "test.json.zip", "the MultiWOZ 2.1 test split")
    questions, every_turn = bench_eval.load_turns("slot", 12, "random", 0)
    turns = {(q["dialogue_id"], q["turn"]) for q in questions}
    assert len(turns) >= 12
    assert len(questions) == 30 * len(turns)
    by_dialogue = {}
    for d, t in turns:
        by_dialogue.setdefault(d, set()).add(t)
    split_turns = {}
    for q in every_turn:
        split_turns.setdefault(q["dialogue_id"], set()).add(q["turn"])
    assert len(every_turn) == 7372  # one question per user turn of the 2.1 test split
    assert all(split_turns[d] == ts for d, ts in by_dialogue.items())
    assert bench_eval.load_turns("slot", 12, "random", 0)[0] == questions
    assert {q["dialogue_id"] for q in bench_eval.load_turns("slot", 12, "random", 1)[0]} != set(by_dialogue)
    first, _ = bench_eval.load_turns("slot", 5, "first", 0)
    assert len({(q["dialogue_id"], q["turn"]) for q in first}) == 5
    assert len(first) == 150

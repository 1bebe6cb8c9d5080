"""The parts of benchmarks/ that decide what a figure means: which questions are timed, in which order the arms run,
how chunks add up, how a table lines up."""

import importlib
from pathlib import Path

import pytest
from conftest import SHARED, require

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def shared_module(monkeypatch, name: str):
    """A module of benchmarks/common as the benchmarks import it (run as scripts: their folder first on sys.path)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module(f"common.{name}")


@pytest.fixture
def timing(monkeypatch):
    return shared_module(monkeypatch, "timing")


@pytest.fixture
def data(monkeypatch):
    return shared_module(monkeypatch, "data")


def question(dialogue: str, turn: int, slot: str) -> dict:
    return {"id": f"{dialogue}/{turn}/{slot}", "dialogue_id": dialogue, "turn": turn}


def test_turn_chunks_keep_whole_turns_in_order(timing):
    questions = [question(d, t, s) for d, turns in (("A", 3), ("B", 2)) for t in range(turns) for s in "xyz"]
    chunks = timing.turn_chunks(questions, 2)
    assert [len(c) for c in chunks] == [6, 6, 3]
    assert [q for c in chunks for q in c] == questions
    assert [{(q["dialogue_id"], q["turn"]) for q in c} for c in chunks] == [
        {("A", 0), ("A", 1)},
        {("A", 2), ("B", 0)},
        {("B", 1)},
    ]


def test_add_runs_sums_time_and_weights_the_mean_prompt(timing):
    def run(questions, seconds, tokens, prompt, peak, outputs):
        return {
            "chunks": [{"questions": questions}],
            "questions": questions, "batch_size": 30, "seconds": seconds, "questions_per_s": questions / seconds,
            "generated_tokens": tokens, "tokens_per_s": tokens / seconds, "mean_prompt_tokens": prompt,
            "peak_memory_mib": peak, "outputs": outputs,
        }  # fmt: skip

    first, second = run(30, 10.0, 300, 100.0, 900.0, {"a": "1"}), run(90, 20.0, 600, 200.0, 800.0, {"b": "2"})
    total = timing.add_runs(first, second)
    assert total["questions"] == 120
    assert total["questions_per_s"] == pytest.approx(120 / 30.0)
    assert total["tokens_per_s"] == pytest.approx(900 / 30.0)
    assert total["mean_prompt_tokens"] == pytest.approx((30 * 100 + 90 * 200) / 120)
    assert total["peak_memory_mib"] == 900.0
    assert total["outputs"] == {"a": "1", "b": "2"}
    assert total["chunks"] == [{"questions": 30}, {"questions": 90}]


def test_random_turn_sample_takes_whole_dialogues(data):
    """A random sample holds every turn of the dialogues it draws (the split's mix of history lengths), and its
    seed decides it; the first-dialogues sample is exactly the turns asked."""
    require(SHARED / "data" / "multiwoz21" / "test.json.zip", "the MultiWOZ 2.1 test split")
    questions, every_turn = data.load_turns("slot", 12, "random", 0)
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
    assert data.load_turns("slot", 12, "random", 0)[0] == questions
    assert {q["dialogue_id"] for q in data.load_turns("slot", 12, "random", 1)[0]} != set(by_dialogue)
    first, _ = data.load_turns("slot", 5, "first", 0)
    assert len({(q["dialogue_id"], q["turn"]) for q in first}) == 5
    assert len(first) == 150


def test_arms_take_turns_so_that_load_hits_each_alike(timing):
    assert [timing.arm_order(["A", "B"], k) for k in range(4)] == [["A", "B"], ["B", "A"], ["A", "B"], ["B", "A"]]
    assert [timing.arm_order(("x", "y", "z"), k) for k in range(4)] == [
        ["x", "y", "z"],
        ["y", "z", "x"],
        ["z", "x", "y"],
        ["x", "y", "z"],
    ]


def test_table_titles_line_up_with_their_values(monkeypatch, capsys):
    report = shared_module(monkeypatch, "report")
    columns = [("arm", "<6"), ("tok/s", ">8,.0f"), ("share", ">6.1%")]
    report.print_table(columns, [["base", 1234.4, 0.5], ["ours", 98765.6, None]])
    report.print_table(columns[:2], [["base", 1.0]], indent="  ", rule=False)
    assert capsys.readouterr().out.splitlines() == [
        "arm       tok/s  share",
        "----------------------",
        "base      1,234  50.0%",
        "ours     98,766    n/a",
        "  arm       tok/s",
        "  base          1",
    ]


GPU_CHECK_STEPS = ["train_recipes", "qlora_1b", "lora_mfu_8b", "fsdp2_smoke", "zero3_smoke", "generation"]


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # not installed, or its native parts fail to load: the check skips that step too
        return False
    return True


@pytest.mark.slow
def test_gpu_check_dry_run_records_every_step_with_figures_or_why_not(tmp_path, squad_dev, smollm2_tokenizer_dir):
    """benchmarks/gpu_check.py --dry_run: every step at tiny sizes on this CPU, each in the JSON with its figures, or
    skipped for the one reason this machine gives (FSDP shards nothing on a CPU; no deepspeed; no bitsandbytes)."""
    import json
    import subprocess
    import sys

    import torch

    require(smollm2_tokenizer_dir, "the tiny models' tokenizer")
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--dry_run", "--json_out", str(out)]
    done = subprocess.run(command, cwd=BENCHMARKS.parent, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and "--dry_run" in report["command"]
    assert report["versions"]["torch"] == torch.__version__ and report["device"]
    steps = report["steps"]
    assert list(steps) == GPU_CHECK_STEPS
    expected_skips = {"fsdp2_smoke"} if not torch.cuda.is_available() else set()
    expected_skips |= {"zero3_smoke"} if not importable("deepspeed") else set()
    expected_skips |= {"qlora_1b"} if not importable("bitsandbytes") else set()
    assert {name: step["status"] for name, step in steps.items()} == {
        name: "skipped" if name in expected_skips else "ok" for name in GPU_CHECK_STEPS
    }, {name: step.get("reason") or step.get("error") for name, step in steps.items()}
    assert all(steps[name]["reason"] and steps[name]["seconds"] > 0 for name in expected_skips)

    recipes = steps["train_recipes"]
    ours, original = recipes["arms"]["ours"], recipes["arms"]["original"]
    assert ours["tokens_per_s"] > 0 and original["tokens_per_s"] > 0
    assert recipes["ratio_tokens_per_s"] == ours["tokens_per_s"] / original["tokens_per_s"]
    # the two recipes as configs/ gives them: ours pads each batch to its longest row, the original to max_length
    assert (ours["lora"], original["lora"]) == (
        {"r": 64, "alpha": 128, "dropout": 0.05},
        {"r": 64, "alpha": 16, "dropout": 0.1},
    )
    assert (ours["gradient_checkpointing"], original["gradient_checkpointing"]) == (False, True)
    assert original["padding_fraction"] > ours["padding_fraction"]
    assert ours["non_pad_tokens"] == original["non_pad_tokens"]  # the same examples
    if "qlora_1b" not in expected_skips:
        qlora = steps["qlora_1b"]
        assert qlora["quantization"] == "4bit" and qlora["tokens_per_s"] > 0 and qlora["peak_memory_bytes"] > 0
    mfu = steps["lora_mfu_8b"]
    assert mfu["tokens_per_s"] > 0 and mfu["parameters"] > mfu["linear_parameters"] > 0
    if not torch.cuda.is_available():  # no known peak FLOP/s: no MFU, and it says why
        assert mfu["mfu"] is None and "no bf16 peak" in mfu["mfu_note"]
    for name in ("fsdp2_smoke", "zero3_smoke"):
        if name not in expected_skips:
            assert steps[name]["adapter_whole"] and steps[name]["engine_files"]
            assert steps[name]["adapter_tensors_saved"] == steps[name]["adapter_tensors_expected"] > 0
    generation = steps["generation"]
    assert generation["questions"] == 4 and generation["split_questions"] == 3856
    assert generation["questions_per_s"] > 0

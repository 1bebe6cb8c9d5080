"""test.py on a tiny random model: batching does not change greedy answers, rows are scored, runs resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import test as test_script
from llama_squad import generation
from llama_squad.generation import ANSWER_PREFIX, GenerationOptions, Generator, load_examples, start_conversation
from llama_squad.results import read_results

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


def answer_all(generator, examples, batch_size):
    outputs = {}
    for start in range(0, len(examples), batch_size):
        conversations = [start_conversation(ex) for ex in examples[start : start + batch_size]]
        generator.answer(conversations)
        outputs.update({c.example["id"]: (c.outputs, c.completion_tokens) for c in conversations})
    return outputs


def test_greedy_answers_do_not_depend_on_the_batch_size(tiny, tiny_dataset_dir):
    model, tokenizer = tiny
    examples = load_examples(str(tiny_dataset_dir), "test", None)
    generator = Generator(model, tokenizer, GenerationOptions(max_new_tokens=12))
    one = answer_all(generator, examples, 1)
    batched = answer_all(generator, examples, 5)
    assert one == batched
    assert len({o[0][0] for o in one.values()}) > 1  # not one degenerate answer for all


def test_force_answer_prefills_the_json(tiny, tiny_dataset_dir):
    model, tokenizer = tiny
    examples = load_examples(str(tiny_dataset_dir), "test", 3)
    generator = Generator(model, tokenizer, GenerationOptions(max_new_tokens=5, force_answer=True))
    for outputs, _ in answer_all(generator, examples, 3).values():
        assert outputs[0].startswith(ANSWER_PREFIX)


def test_multi_turn_runs_instruction_by_instruction(tiny, tmp_path):
    from conftest import write_squad

    import create_dataset

    out = tmp_path / "mt"
    argv = ["--task", "squad_v2", "--train_file", str(write_squad(tmp_path / "s.json")), "--test_articles", "5:6",
            "--prompt", "multi_turn", "--output_dir", str(out)]  # fmt: skip
    assert create_dataset.main(argv) == 0
    model, tokenizer = tiny
    examples = load_examples(str(out), "test", 2)
    conversations = [start_conversation(ex) for ex in examples]
    Generator(model, tokenizer, GenerationOptions(max_new_tokens=4)).answer(conversations)
    for c in conversations:
        assert len(c.outputs) == 3
        assert [m["role"] for m in c.messages[-6:]] == ["user", "assistant", "user", "assistant", "user", "assistant"]
        assert c.messages[-4]["content"] == c.example["completion"][1]["content"]  # follow-up asked in order


def run_test_py(model_dir, data_dir, out, *extra):
    return ["--model_name_or_path", str(model_dir), "--dataset_path", str(data_dir), "--output_dir", str(out),
            "--max_new_tokens", "6", *extra]  # fmt: skip


def strict_json_only(constant):
    raise AssertionError(f"metrics.json holds {constant}, which strict JSON parsers reject")


def test_undefined_metrics_are_written_as_null(tmp_path):
    generation.save_metrics(
        {"total": 3, "abstain_precision": float("nan"), "f1": np.float64(1 / 3)}, tmp_path / "m.json"
    )
    metrics = json.loads((tmp_path / "m.json").read_text(), parse_constant=strict_json_only)
    assert metrics == {"total": 3, "abstain_precision": None, "f1": 0.333333}


def test_results_and_metrics_files(tiny_model_dir, tiny_dataset_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert test_script.main(run_test_py(tiny_model_dir, tiny_dataset_dir, out, "--batch_size", "3")) == 0
    results = read_results(out / "results.csv")
    assert len(results) == 8 and results["id"].is_unique
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=strict_json_only)
    assert metrics["total"] == 8 and metrics["HasAns_total"] == 4
    assert metrics["exact"] == pytest.approx(100 * results["exact"].mean(), abs=1e-4)
    assert "| eval" in capsys.readouterr().out
    assert (results["completion_tokens"] > 0).all() and (results["prompt_tokens"] > 50).all()


def test_a_killed_run_resumes_without_losing_or_repeating_rows(tiny_model_dir, tiny_dataset_dir, tmp_path):
    out = tmp_path / "eval"
    csv = out / "results.csv"
    argv = [sys.executable, str(REPO / "test.py"),
            *run_test_py(tiny_model_dir, tiny_dataset_dir, out, "--batch_size", "1",
                         "--max_new_tokens", "40")]  # fmt: skip
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if csv.exists() and csv.read_text().count("squad_v2") >= 2:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    before = read_results(csv)
    assert 2 <= len(before) < 8, "the run was killed before it finished"
    assert test_script.main(run_test_py(tiny_model_dir, tiny_dataset_dir, out, "--batch_size", "4",
                                        "--max_new_tokens", "40")) == 0  # fmt: skip
    after = read_results(csv)
    assert len(after) == 8 and after["id"].is_unique
    assert after.iloc[: len(before)]["raw_output"].tolist() == before["raw_output"].tolist()


@pytest.mark.parametrize("granularity", ["slot", "domain"])
def test_dst_runs_through_the_same_test_py(tiny_model_dir, tmp_path, granularity):
    import create_dataset
    from llama_squad.tasks.multiwoz_scoring import SLOT_NAMES

    demo = REPO / "data" / "demo"
    data = tmp_path / "dst"
    argv = ["--task", "multiwoz", "--data_file", str(demo / "multiwoz_demo.json"),
            "--val_list", str(demo / "multiwoz_demo_valListFile"), "--test_list",
            str(demo / "multiwoz_demo_testListFile"), "--max_length", "0", "--granularity", granularity,
            "--output_dir", str(data)]  # fmt: skip
    assert create_dataset.main(argv) == 0
    examples_per_turn = len(SLOT_NAMES) if granularity == "slot" else 5
    out = tmp_path / "eval"
    limit = 2 * examples_per_turn  # the first two turns of the first test dialogue
    assert test_script.main(run_test_py(tiny_model_dir, data, out, "--limit", str(limit), "--batch_size", "16")) == 0
    results = read_results(out / "results.csv")
    assert len(results) == 2 * len(SLOT_NAMES) and results["id"].is_unique
    assert results["example_id"].nunique() == limit
    assert set(results["slot"]) == set(SLOT_NAMES) and results["dialogue_id"].nunique() == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete_turns"] == 2 and 0 <= metrics["jga"] <= 100 and "jga_fuzzy" in metrics

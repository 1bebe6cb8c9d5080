"""test.py on a tiny random model: batching does not change greedy answers, rows are scored, runs resume."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import test as test_script
from llama_squad import evaluation
from llama_squad.evaluation import ANSWER_PREFIX, Answerer, load_examples, start_conversation
from llama_squad.files import InputError
from llama_squad.generation import GenerationOptions, Generator
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
    generator = Answerer(Generator(model, tokenizer, GenerationOptions(max_new_tokens=12)))
    one = answer_all(generator, examples, 1)
    batched = answer_all(generator, examples, 5)
    assert one == batched
    assert len({o[0][0] for o in one.values()}) > 1  # not one degenerate answer for all


def test_force_answer_prefills_the_json(tiny, tiny_dataset_dir):
    model, tokenizer = tiny
    examples = load_examples(str(tiny_dataset_dir), "test", 3)
    generator = Answerer(Generator(model, tokenizer, GenerationOptions(max_new_tokens=5, force_answer=True)))
    for outputs, _ in answer_all(generator, examples, 3).values():
        assert outputs[0].startswith(ANSWER_PREFIX)


def test_load_examples_refuses_repeated_ids(tiny_dataset_dir, tmp_path):
    """A dataset written before create_dataset.py refused repeated MultiWOZ dialogues may repeat question ids."""
    from datasets import DatasetDict, concatenate_datasets, load_from_disk

    splits = load_from_disk(str(tiny_dataset_dir))
    test = splits["test"]
    repeated = concatenate_datasets([test.select(range(3)), test.select([1]), test.select(range(3, len(test)))])
    old = tmp_path / "old"
    DatasetDict({"train": splits["train"], "test": repeated}).save_to_disk(str(old))
    assert len(load_examples(str(old), "train", None)) == len(splits["train"])
    with pytest.raises(InputError) as error:
        load_examples(str(old), "test", 2)
    assert str(error.value) == (
        f"{old}: the test split repeats the question id {test[1]['id']!r}: ids must be unique (results are kept by "
        "id); rebuild the dataset with create_dataset.py"
    )


def multi_turn_examples(tmp_path, limit: int) -> list[dict]:
    """The first test questions of a small SQuAD dataset built with multi-turn prompts."""
    from conftest import write_squad

    import create_dataset

    out = tmp_path / "mt"
    argv = ["--task", "squad_v2", "--train_file", str(write_squad(tmp_path / "s.json")), "--test_articles", "5:6",
            "--prompt", "multi_turn", "--output_dir", str(out)]  # fmt: skip
    assert create_dataset.main(argv) == 0
    return load_examples(str(out), "test", limit)


def test_multi_turn_runs_instruction_by_instruction(tiny, tmp_path):
    model, tokenizer = tiny
    examples = multi_turn_examples(tmp_path, 2)
    conversations = [start_conversation(ex) for ex in examples]
    Answerer(Generator(model, tokenizer, GenerationOptions(max_new_tokens=4))).answer(conversations)
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
    evaluation.save_metrics(
        {"total": 3, "abstain_precision": float("nan"), "f1": np.float64(1 / 3)}, tmp_path / "m.json"
    )
    metrics = json.loads((tmp_path / "m.json").read_text(), parse_constant=strict_json_only)
    assert metrics == {"total": 3, "abstain_precision": None, "f1": 0.333333}


def test_results_and_metrics_files(tiny_model_dir, tiny_dataset_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "eval"
    assert test_script.main(run_test_py(tiny_model_dir, tiny_dataset_dir, out, "--batch_size", "3")) == 0
    results = read_results(out / "results.csv")
    assert len(results) == 8 and results["id"].is_unique
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=strict_json_only)
    assert metrics["task"] == "squad_v2" and list(metrics)[:2] == ["task", "total"]  # export checks the task
    assert metrics["total"] == 8 and metrics["HasAns_total"] == 4
    assert metrics["exact"] == pytest.approx(100 * results["exact"].mean(), abs=1e-4)
    headline = f"valid_json {metrics['valid_json']:.1f}, exact {metrics['exact']:.1f}"
    assert f"{tmp_path.name}, 8 questions: {headline}" in caplog.text  # NAME/eval/results.csv: run NAME
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
    from llama_squad.tasks.multiwoz import SLOT_NAMES

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
    assert metrics["task"] == "multiwoz"
    assert metrics["complete_turns"] == 2 and 0 <= metrics["jga"] <= 100 and "jga_fuzzy" in metrics


def test_prefix_groups_join_consecutive_prompts_that_share_most_tokens():
    from llama_squad.evaluation import batches_of_groups, prefix_groups
    from llama_squad.generation import common_prefix_length

    turn_a = [[1, 2, 3, 4, 5, 6, 7, 10], [1, 2, 3, 4, 5, 6, 7, 11, 12], [1, 2, 3, 4, 5, 6, 7, 13]]
    turn_b = [[1, 2, 9, 9, 9, 9, 9, 20], [1, 2, 9, 9, 9, 9, 9, 21]]
    lone = [[5, 5, 5]]
    prompts = turn_a + turn_b + lone
    assert common_prefix_length(turn_a[0], turn_a[1]) == 7 and common_prefix_length([1, 2], [1, 2]) == 2
    assert prefix_groups(prompts, batch_size=8) == [([0, 1, 2], 7), ([3, 4], 7), ([5], 2)]
    # a full group starts another one; the shared length never takes a prompt's last token
    assert prefix_groups(turn_a, batch_size=2) == [([0, 1], 7), ([2], 7)]
    assert prefix_groups([[1, 2, 3], [1, 2, 3]], batch_size=8) == [([0, 1], 2)]
    # the turns of one dialogue: each extends the dialogue before it, then asks three questions; a group per turn,
    # though a turn shares most of its tokens with the next (joined, the later turn's questions would each feed
    # the new dialogue on their own)
    dialogue, turns = list(range(1000, 1060)), []
    for turn in range(3):
        dialogue = dialogue + list(range(2000 + 100 * turn, 2040 + 100 * turn))  # a reply and the user's next words
        turns += [dialogue + [90, 91, 92 + question] for question in range(3)]
    assert [members for members, _ in prefix_groups(turns, batch_size=9)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    lengths = [len(p) for p in prompts]
    batches = list(batches_of_groups(prefix_groups(prompts, 8), lengths, batch_size=4))
    assert batches == [[(0, 7), (1, 7), (2, 7)], [(3, 7), (4, 7), (5, 2)]]  # whole groups, longest first


@pytest.mark.parametrize("source", ["multiwoz_slot", "squad_multi_turn"])
def test_shared_prefix_answers_equal_the_unshared_ones(tmp_path, tiny_model_dir, source):
    """Greedy answers are the same tokens with and without prefix sharing: MultiWOZ turns (30 questions after one
    dialogue) and multi-turn SQuAD prompts (every turn starts with the shared context)."""
    from conftest import write_squad

    import create_dataset
    from llama_squad.config import ModelLoadingArguments
    from llama_squad.models import load_for_inference
    from llama_squad.results import read_results

    data = tmp_path / "data"
    if source == "multiwoz_slot":
        demo = REPO / "data" / "demo"
        argv = ["--task", "multiwoz", "--data_file", str(demo / "multiwoz_demo.json"), "--val_list",
                str(demo / "multiwoz_demo_valListFile"), "--test_list", str(demo / "multiwoz_demo_testListFile"),
                "--max_length", "0", "--output_dir", str(data)]  # fmt: skip
        limit = 90
    else:
        argv = ["--task", "squad_v2", "--train_file", str(write_squad(tmp_path / "s.json", 6, 6)), "--test_articles",
                "3:6", "--prompt", "multi_turn", "--output_dir", str(data)]  # fmt: skip
        limit = None
    assert create_dataset.main(argv) == 0
    examples = load_examples(str(data), "test", limit)
    model, tokenizer = load_for_inference(ModelLoadingArguments(str(tiny_model_dir)))
    outputs = {}
    for share in (False, True):
        answerer = Answerer(Generator(model, tokenizer, GenerationOptions(max_new_tokens=10, share_prefix=share)))
        csv = tmp_path / f"share_{share}" / "results.csv"
        evaluation.answer_examples(answerer, examples, csv, batch_size=32, progress=False)
        outputs[share] = read_results(csv).set_index("id").sort_index()[["raw_output", "completion_tokens"]]
    assert len(outputs[True]) == len(examples)
    pd.testing.assert_frame_equal(outputs[True], outputs[False])


def test_the_shared_prefix_runs_once_per_group(tiny_model_dir):
    """Three prompts of one group and one of another: the model sees the two distinct prefixes once, then each row's
    own tokens; the cache handed to generate has a row per prompt."""
    from llama_squad.config import ModelLoadingArguments
    from llama_squad.models import load_for_inference

    model, tokenizer = load_for_inference(ModelLoadingArguments(str(tiny_model_dir)))
    generator = Generator(model, tokenizer, GenerationOptions(max_new_tokens=3))
    shared = list(range(100, 140))
    prompts = [shared + [7], shared + [8, 9], shared + [10], [200, 201, 202, 203]]
    prefixes = [tuple(shared)] * 3 + [(200, 201, 202)]
    seen = []
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        input_ids, attention_mask, cache = generator.shared_prefix_cache(prompts, prefixes)
    finally:
        handle.remove()
    assert seen == [(2, 40)]  # the two distinct prefixes, left-padded to the longer one
    assert cache.get_seq_length() == 40 and input_ids.shape == (4, 42) and attention_mask.shape == (4, 42)
    assert input_ids[1].tolist() == shared + [8, 9]
    assert attention_mask[0].tolist() == [1] * 40 + [0, 1] and attention_mask[3].tolist() == [0] * 37 + [1] * 3 + [
        0,
        1,
    ]
    assert input_ids[3, 37:40].tolist() == [200, 201, 202] and input_ids[3, -1].item() == 203


def test_each_turn_starts_from_the_cache_of_the_previous_turn(tiny, tmp_path):
    """Multi-turn prompts: turns after the first feed only their new tokens (the assistant's reply and the next
    instruction), not the context again; the answers stay those of the unshared path (compared above)."""
    model, tokenizer = tiny
    examples = multi_turn_examples(tmp_path, 3)
    fed = {}
    for share in (False, True):
        generator = Answerer(Generator(model, tokenizer, GenerationOptions(max_new_tokens=4, share_prefix=share)))
        conversations = [start_conversation(ex) for ex in examples]
        widths: list[int] = []
        hook = model.register_forward_pre_hook(
            lambda m, args, kwargs, seen=widths: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
        )
        try:
            generator.answer(conversations)
        finally:
            hook.remove()
        fed[share] = [w for w in widths if w > 1]  # the prefill of each turn (decoding steps feed one token)
        n = len(examples[0]["prompt"])  # the system and user messages, then a reply and the next instruction
        first = [generator.prompt_ids(c.messages[:n], last_turn=False)[0] for c in conversations]
        second = [generator.prompt_ids(c.messages[: n + 2], last_turn=False)[0] for c in conversations]
    assert len(fed[False]) == len(fed[True]) == 3  # one prefill per turn
    assert fed[False][1] == max(len(p) for p in second)  # unshared: the whole second prompt again
    assert all(p[: len(f)] == f for f, p in zip(first, second, strict=True))  # the second prompt extends the first
    new_tokens = max(len(p) - len(f) for f, p in zip(first, second, strict=True))
    assert fed[True][1] <= new_tokens < fed[False][1] / 3  # shared: the reply and the follow-up instruction only

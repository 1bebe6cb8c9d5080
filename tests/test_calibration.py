"""Calibrated abstention: the no-answer probability the engine reads, the official threshold search, answers that flip
both ways, and test.py's calibration on the validation split with the official script's files."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import summarize_results
import test as test_script
from llama_squad.evaluation import calibration
from llama_squad.generation import ValueProbe, ValueProbeProcessor
from llama_squad.tasks import get_task

SQUAD = get_task("squad_v2")
MULTIWOZ = get_task("multiwoz")


# ------------------------------------------------------------------------------------------- the probe


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def abstaining_ids(tokenizer) -> list[int]:
    """The tokens that begin ``?"`` (a beginning of it, or beginning with it), found the slow way."""
    ids = []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if i not in tokenizer.all_special_ids and text and ('?"'.startswith(text) or text.startswith('?"')):
            ids.append(i)
    return ids


def test_the_probe_reads_the_abstaining_mass_where_the_value_begins(tokenizer):
    """The row whose written text ends with ``{"answer": "`` gets the softmax mass of the tokens that begin ``?"``;
    the row that has not reached its value gets nothing until it does, and reads it then."""
    vocab = len(tokenizer)
    torch.manual_seed(0)
    scores = torch.randn(2, vocab)
    probe = ValueProbeProcessor([ValueProbe(written='{"answer": "'), ValueProbe(written='{"answer"')], tokenizer)
    prompt = torch.zeros((2, 5), dtype=torch.long)
    probe(prompt, scores.clone())
    expected = float(torch.softmax(scores[0], -1)[abstaining_ids(tokenizer)].sum())
    assert probe.prob[0] == pytest.approx(expected, abs=1e-6) and probe.prob[1] is None

    rest = tokenizer(': "', add_special_tokens=False)["input_ids"]  # the rest of the second row's opening
    step = prompt
    for k, token in enumerate(rest):
        step = torch.cat([step, torch.tensor([[7], [token]])], dim=1)
        later = torch.randn(2, vocab)
        probe(step, later.clone())
        if k < len(rest) - 1:
            assert probe.prob[1] is None
    assert probe.prob[1] == pytest.approx(float(torch.softmax(later[1], -1)[abstaining_ids(tokenizer)].sum()), 1e-6)


def test_a_forbidding_probe_takes_the_abstention_away_there_only(tokenizer):
    scores = torch.zeros(1, len(tokenizer))
    ids = abstaining_ids(tokenizer)
    scores[0, ids] = 20.0  # the model would abstain
    probe = ValueProbeProcessor([ValueProbe(written='{"answer": "', forbid=True)], tokenizer)
    out = probe(torch.zeros((1, 3), dtype=torch.long), scores)
    assert probe.prob[0] > 0.9
    assert torch.isinf(out[0, ids]).all() and torch.isfinite(out[0]).sum() == len(tokenizer) - len(ids)
    again = probe(torch.zeros((1, 4), dtype=torch.long), torch.zeros(1, len(tokenizer)))
    assert torch.isfinite(again).all()  # read once: the next positions are free


# ------------------------------------------------------------------------------------------- thresholds


def squad_rows(specs: list[tuple]) -> pd.DataFrame:
    """Results rows of (gold answers, greedy answer or "?", no-answer probability, best answer)."""
    rows = []
    for k, (answers, answer, prob, best) in enumerate(specs):
        raw = json.dumps({"answer": answer})
        (scored,) = SQUAD.score_output(raw, {"answers": answers, "title": "t"})
        rows.append({"example_id": f"q{k}", "id": f"q{k}", "task": "squad_v2", "question": "q?", "answers": answers,
                     "raw_output": raw, **scored, "prompt_tokens": 5, "completion_tokens": 2, "constrain": "none",
                     "no_answer_prob": prob, "best_answer": best})  # fmt: skip
    return pd.DataFrame(rows)


def test_a_threshold_flips_answers_both_ways():
    rows = squad_rows([
        (["Paris"], "?", 0.2, "Paris"),  # abstained, though not sure: answers its best answer under 0.5
        ([], "Rome", 0.9, ""),  # answered an unanswerable question, unsure of it: abstains under 0.5
        (["Oslo"], "Oslo", 0.1, ""),  # right and sure: stays
        ([], "?", 0.95, "Lima"),  # abstained, sure: stays
        (["Bern"], "Bern", float("nan"), ""),  # the value was never read: keeps its greedy answer
    ])  # fmt: skip
    assert SQUAD.summarize(rows)["exact"] == 60.0
    flipped = calibration.apply_thresholds(SQUAD, rows, 0.5)
    assert flipped["parsed_answer"].tolist() == ["Paris", "?", "Oslo", "?", "Bern"]
    assert flipped["exact"].tolist() == [1.0] * 5 and flipped["valid_json"].tolist() == rows["valid_json"].tolist()
    assert calibration.calibrated_metrics(SQUAD, rows, 0.5, "calibrated_")["calibrated_exact"] == 100.0
    # the official search: abstain everywhere (2 right), then answer in order of probability: q2 +1, q0 +1, q4 +1
    # (the never-read row counts as 0), q1 -1, q3 0: best after q0, at its probability
    assert calibration.choose_thresholds(SQUAD, rows) == 0.2


def test_the_search_is_the_official_one_on_real_predictions(squad_dev):
    """On 2,000 dev questions with a leaderboard model's predictions and no-answer probabilities that know something:
    the threshold and the best F1 of the official evaluate-v2.0.py (``squad_eval``), and its scores under that
    threshold, equal ours."""
    from llama_squad.tasks.squad_v2 import official

    data = json.loads(squad_dev.read_text())["data"]
    predictions = json.loads((squad_dev.parent / "predictions" / "bidaf_sa_elmo_allenai.json").read_text())
    golds = official.gold_answers_by_id(data)
    qids = list(golds)[:2000]
    rng = np.random.default_rng(0)
    na_probs = {q: float(np.clip(rng.normal(0.35 if golds[q] else 0.65, 0.2), 0, 1)) for q in qids}
    subset = [{"title": "t", "paragraphs": [{"context": "c", "qas": [{"id": q, "question": "?", "answers": [
        {"text": a, "answer_start": 0} for a in golds[q]]} for q in qids]}]}]  # fmt: skip
    expected = official.evaluate(subset, {q: predictions[q] for q in qids}, na_probs)
    rows = squad_rows([(golds[q], predictions[q] or "?", na_probs[q], "") for q in qids])
    threshold = calibration.choose_thresholds(SQUAD, rows)
    assert threshold == expected["best_f1_thresh"]
    ours = calibration.calibrated_metrics(SQUAD, rows, threshold, "calibrated_")
    under = official.evaluate(subset, {q: predictions[q] for q in qids}, na_probs, na_prob_thresh=threshold)
    assert ours["calibrated_f1"] == pytest.approx(expected["best_f1"], abs=1e-9)
    assert ours["calibrated_f1"] == pytest.approx(under["f1"], abs=1e-9)
    assert ours["calibrated_exact"] == pytest.approx(under["exact"], abs=1e-9)


def slot_rows(specs: list[tuple]) -> pd.DataFrame:
    """MultiWOZ slot rows of (dialogue turn, slot, gold values, greedy value or "?", probability, best value)."""
    rows = []
    for turn, slot, gold, value, prob, best in specs:
        example = {"dialogue_id": "D1", "turn": turn, "domain": slot.split("-")[0], "slot": slot, "answers": gold}
        (scored,) = MULTIWOZ.score_output(json.dumps({"answer": value}), example)
        key = f"D1/{turn}/{slot}"
        rows.append({"example_id": key, "id": key, "task": "multiwoz", "question": slot, "answers": gold,
                     "raw_output": "", **example, **scored, "no_answer_prob": prob, "best_answer": best})  # fmt: skip
    return pd.DataFrame(rows)


def test_multiwoz_has_one_threshold_per_slot():
    rows = slot_rows([
        (0, "hotel-area", ["north"], "?", 0.3, "north"),
        (0, "hotel-pricerange", [], "cheap", 0.6, ""),
        (1, "hotel-area", ["north"], "north", 0.1, ""),
        (1, "hotel-pricerange", ["cheap"], "cheap", 0.2, ""),
    ])  # fmt: skip
    thresholds = calibration.choose_thresholds(MULTIWOZ, rows)
    assert thresholds == {"hotel-area": 0.3, "hotel-pricerange": 0.2}
    before, after = MULTIWOZ.summarize(rows), calibration.calibrated_metrics(MULTIWOZ, rows, thresholds, "c_")
    assert before["slot_accuracy"] == 50.0 and after["c_slot_accuracy"] == 100.0  # (a turn of 30 slots: JGA)


# ------------------------------------------------------------------------------------------- test.py


def test_test_py_calibrates_on_validation_and_writes_the_official_files(tmp_path, tiny_model_dir, tiny_dataset_dir):
    from llama_squad.tasks.squad_v2 import official

    out = tmp_path / "eval"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(tiny_dataset_dir), "--output_dir",
            str(out), "--max_new_tokens", "6", "--force_answer", "--constrain", "extractive", "--best_answers",
            "--calibrate_on", "validation"]  # fmt: skip
    assert test_script.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    record = json.loads((out / "run.json").read_text())
    chosen = json.loads((out / "calibration" / "calibration.json").read_text())
    assert metrics["threshold_source"] == record["calibration"]["source"] == chosen["source"]
    assert metrics["threshold_source"].startswith("validation split (4 rows")
    assert metrics["no_answer_threshold"] == record["calibration"]["threshold"] == round(chosen["threshold"], 6)
    rows = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert rows["no_answer_prob"].map(lambda p: 0 <= float(p) <= 1).all()  # --force_answer: every value read

    # the official script on the files beside results.csv: the greedy scores, and with predictions_best.json under
    # the threshold, the calibrated ones; its best_f1 is the oracle ceiling
    data = [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": r["id"], "question": "?", "answers": [{"text": a, "answer_start": 0} for a in json.loads(r["answers"])]}
        for _, r in rows.iterrows()]}]}]  # fmt: skip
    na_probs = json.loads((out / "na_prob.json").read_text())
    greedy = official.evaluate(data, json.loads((out / "predictions.json").read_text()), na_probs)
    assert (greedy["exact"], greedy["f1"]) == pytest.approx((metrics["exact"], metrics["f1"]), abs=1e-4)
    best_file = out / "predictions_best.json"
    best = (
        json.loads(best_file.read_text()) if best_file.exists() else json.loads((out / "predictions.json").read_text())
    )
    calibrated = official.evaluate(data, best, na_probs, na_prob_thresh=metrics["no_answer_threshold"])
    assert calibrated["f1"] == pytest.approx(metrics["calibrated_f1"], abs=1e-4)
    assert calibrated["best_f1"] == pytest.approx(metrics["oracle_f1"], abs=1e-4)


def test_a_results_file_without_probabilities_summarizes_without_the_calibrated_columns(tmp_path, capsys):
    from llama_squad.results import OPTIONAL_COLUMNS, RESULT_COLUMNS

    folder = tmp_path / "old"
    folder.mkdir()
    rows = squad_rows([(["Paris"], "Paris", 0.1, ""), ([], "?", 0.9, "")])
    rows["answers"] = rows["answers"].map(json.dumps)
    rows[[c for c in RESULT_COLUMNS if c not in OPTIONAL_COLUMNS] + ["title"]].to_csv(folder / "results.csv",
                                                                                      index=False)  # fmt: skip
    table = tmp_path / "table.csv"
    assert summarize_results.main([str(folder / "results.csv"), "--output", str(table), "--format", "csv"]) == 0
    columns = pd.read_csv(table).columns
    assert "exact" in columns and not [c for c in columns if c.startswith(("calibrated_", "oracle_"))]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--no_answer_threshold", "1.5"], "--no_answer_threshold 1.5: give a probability in [0, 1]"),
        (["--no_answer_threshold", "0.5", "--calibrate_on", "validation"], "--no_answer_threshold and --calibrate_on"),
        (["--calibrate_on", "dev"], "no split 'dev'"),
        (["--calibrate_on", "test"], "the threshold is never chosen on the split it is tested on"),
        (["--calibrate_on", "unlabelled"], "no question of"),
    ],
)
def test_bad_calibration_options_are_one_message_and_write_nothing(
    tmp_path, caplog, tiny_model_dir, tiny_dataset_dir, extra, message
):
    from datasets import DatasetDict, load_from_disk

    splits = load_from_disk(str(tiny_dataset_dir))
    data = tmp_path / "data"
    unlabelled = splits["validation"].map(lambda row: {"answers": []})
    DatasetDict({**splits, "unlabelled": unlabelled}).save_to_disk(str(data))
    out = tmp_path / "eval"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(data), "--output_dir", str(out), *extra]
    assert test_script.main(argv) == 1
    assert message in caplog.text and "Traceback" not in caplog.text
    assert not out.exists()


def test_a_threshold_on_rows_without_probabilities_is_refused(tmp_path):
    from llama_squad.files import InputError

    rows = squad_rows([(["Paris"], "Paris", 0.1, "")]).drop(columns=["no_answer_prob"])
    with pytest.raises(InputError, match="its rows have no no_answer_prob"):
        calibration.require_probabilities(rows, str(Path(tmp_path) / "results.csv"))

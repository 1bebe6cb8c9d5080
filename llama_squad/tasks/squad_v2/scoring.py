"""Scoring a SQuAD v2 answer officially (:mod:`.official`), and the run's metrics."""

import pandas as pd

from llama_squad.answers import parse_json_answer
from llama_squad.tasks.common import percent
from llama_squad.tasks.squad_v2.official import normalize_answer, score_prediction

EXTRA_RESULT_COLUMNS = ("title",)


def has_answer(answers: list[str]) -> bool:
    """Whether a question counts as answerable officially: a gold answer that normalizes to non-empty text."""
    return any(normalize_answer(a) for a in answers)


def score_output(raw_output: str, example: dict) -> list[dict]:
    """The scored results row of one generated answer. "?" and unparseable output count as the empty answer."""
    parsed = parse_json_answer(raw_output)
    prediction = "" if parsed.answer is None or parsed.abstained else parsed.answer
    exact, f1 = score_prediction(prediction, list(example["answers"]))
    return [
        {
            "parsed_answer": parsed.answer if parsed.found else "",
            "valid_json": parsed.valid_json,
            "answer_found": parsed.found,
            "exact": float(exact),
            "f1": float(f1),
            "has_answer": has_answer(example["answers"]),
            "abstained": parsed.abstained,
            "title": example.get("title", ""),
        }
    ]


def summarize(results: pd.DataFrame) -> dict[str, float]:
    """Official EM/F1 with the HasAns/NoAns split, and the original llama-squad table's columns."""
    has, no = results[results["has_answer"]], results[~results["has_answer"]]
    abstained = results[results["abstained"]]
    valid = results[results["valid_json"]]
    metrics = {
        "total": len(results),
        "valid_json": percent(results["valid_json"]),
        "answer_found": percent(results["answer_found"]),
        "exact": percent(results["exact"]),
        "f1": percent(results["f1"]),
        "exact_valid_json": percent(valid["exact"]),  # the original's "% Exact Matches for Valid JSON"
        "correct_no_answer": percent(no["abstained"]),  # unanswerable questions the model answered "?"
        "correct_has_answer": percent(has["exact"]),
        "abstain_precision": percent(~abstained["has_answer"]),
        "abstain_recall": percent(no["abstained"]),
        "HasAns_exact": percent(has["exact"]),
        "HasAns_f1": percent(has["f1"]),
        "HasAns_total": len(has),
        "NoAns_exact": percent(no["exact"]),
        "NoAns_f1": percent(no["f1"]),
        "NoAns_total": len(no),
    }
    return metrics

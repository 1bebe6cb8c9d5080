"""Calibrated abstention: a no-answer threshold chosen where the truth is known, applied to a run's rows, and the
files of the field (the official SQuAD v2 script's predictions and no-answer probabilities).

A row's ``no_answer_prob`` (read by the engine where the answer's value begins) decides it under a threshold ``t``:
above ``t`` it abstains; at or below ``t`` it answers, with its own answer, or where the greedy answer abstained, with
its ``best_answer`` (the best one that does not). A row whose value was never reached (prose, bad JSON) keeps its
greedy decision: it counts as probability 1 where it abstained or no answer could be read, else 0. The threshold is
chosen by the official SQuAD v2 search (``best_f1_thresh``): abstain everywhere, then answer the rows in order of
increasing probability, and keep the threshold of the best total. Each task says which score it maximizes and over
which groups of rows (one threshold for SQuAD v2; one per slot for MultiWOZ).
"""

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from llama_squad.answers import format_json_answer
from llama_squad.files import InputError, atomic_write_json

logger = logging.getLogger(__name__)

CALIBRATED = "calibrated_"  # the prefix of the metrics under the threshold chosen on another split
ORACLE = "oracle_"  # the prefix of the metrics under the threshold that is best on this very split: a ceiling


def has_probabilities(results: pd.DataFrame) -> bool:
    """Whether a run's rows carry the no-answer probability (files written before it do not; beam search reads
    none)."""
    return "no_answer_prob" in results.columns and bool(results["no_answer_prob"].notna().any())


def require_probabilities(results: pd.DataFrame, where: str) -> None:
    """Refuse rows without ``no_answer_prob``: a threshold has nothing to act on."""
    if not has_probabilities(results):
        raise InputError(
            f"{where}: its rows have no no_answer_prob (written before test.py read it, or by beam search): a "
            "no-answer threshold has nothing to act on; answer the questions again with test.py (--overwrite)"
        )


def decision_probs(results: pd.DataFrame) -> np.ndarray:
    """Each row's no-answer probability, the greedy decision where the value was never reached: 1 where the row
    abstained or no answer could be read, else 0."""
    probs = results["no_answer_prob"].to_numpy(dtype=float)
    kept = np.where(results["abstained"] | ~results["answer_found"], 1.0, 0.0)
    return np.where(np.isnan(probs), kept, probs)


def answered_values(results: pd.DataFrame) -> list[str]:
    """What each row answers when it answers: its own answer, or where it abstained its best answer ("" if none)."""
    best = results["best_answer"] if "best_answer" in results.columns else pd.Series("", index=results.index)
    values = []
    for abstained, found, parsed, alternative in zip(
        results["abstained"], results["answer_found"], results["parsed_answer"], best, strict=True
    ):
        values.append(alternative if abstained else (parsed if found else ""))
    return values


def _rescored(task, results: pd.DataFrame, raws: list[str]) -> pd.DataFrame:
    """``results`` with every row scored again by the task as if the model had written ``raws``; the columns that
    describe what the model wrote (valid JSON, raw output) stay as they were."""
    rows = []
    for row, raw in zip(results.to_dict("records"), raws, strict=True):
        example = {**row, "id": row["example_id"]}
        (scored,) = task.score_output(raw, example)
        rows.append({**row, **{k: v for k, v in scored.items() if k not in ("valid_json", "answer_found")}})
    return pd.DataFrame(rows, index=results.index, columns=results.columns)


def _scores_both_ways(task, results: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's score (the task's ``threshold_metric``) when it answers and when it abstains."""
    key, abstain = task.value_probe({}) or ("answer", "?")
    answered = _rescored(task, results, [format_json_answer(v, key) for v in answered_values(results)])
    abstained = _rescored(task, results, [format_json_answer(abstain, key)] * len(results))
    metric = task.threshold_metric
    return answered[metric].to_numpy(dtype=float), abstained[metric].to_numpy(dtype=float)


def best_threshold(probs: np.ndarray, answered: np.ndarray, abstained: np.ndarray) -> tuple[float, float]:
    """The official search (``evaluate-v2.0.py``'s ``find_best_thresh``), for any score: (threshold, best total).

    Start from abstaining everywhere, then answer the rows in order of increasing probability (ties in row order),
    each changing the total by its answered score less its abstained one; the threshold is the probability of the row
    at which the total was best (0 when abstaining everywhere is best)."""
    current = best = float(abstained.sum())
    threshold = 0.0
    for i in np.argsort(probs, kind="stable"):
        current += answered[i] - abstained[i]
        if current > best:
            best, threshold = current, float(probs[i])
    return threshold, best


def choose_thresholds(task, results: pd.DataFrame) -> float | dict[str, float]:
    """The threshold that maximizes the task's score on ``results`` (one, or one per ``threshold_group``)."""
    probs = decision_probs(results)
    answered, abstained = _scores_both_ways(task, results)
    if task.threshold_group is None:
        return best_threshold(probs, answered, abstained)[0]
    thresholds = {}
    for group, index in results.groupby(task.threshold_group, sort=True).indices.items():
        thresholds[str(group)] = best_threshold(probs[index], answered[index], abstained[index])[0]
    return thresholds


def threshold_of(task, results: pd.DataFrame, thresholds: float | dict[str, float]) -> np.ndarray:
    """Each row's threshold (a group the thresholds do not name keeps its greedy decisions: threshold 0.5)."""
    if not isinstance(thresholds, dict):
        return np.full(len(results), float(thresholds))
    return results[task.threshold_group].astype(str).map(thresholds).fillna(0.5).to_numpy(dtype=float)


def apply_thresholds(task, results: pd.DataFrame, thresholds: float | dict[str, float]) -> pd.DataFrame:
    """The rows as they read under ``thresholds``: above its threshold a row abstains, at or below it answers (its
    answer, or its best answer where it abstained), scored again by the task."""
    key, abstain = task.value_probe({}) or ("answer", "?")
    abstains = decision_probs(results) > threshold_of(task, results, thresholds)
    raws = [
        format_json_answer(abstain if a else value, key)
        for a, value in zip(abstains, answered_values(results), strict=True)
    ]
    return _rescored(task, results, raws)


def calibrated_metrics(task, results: pd.DataFrame, thresholds: float | dict[str, float], prefix: str) -> dict:
    """The task's metrics of ``results`` under ``thresholds``, each key prefixed (``calibrated_``, ``oracle_``)."""
    metrics = task.summarize(apply_thresholds(task, results, thresholds))
    return {f"{prefix}{k}": v for k, v in metrics.items() if k not in ("total", "valid_json", "answer_found")}


def check_threshold_source(task, results: pd.DataFrame, where: str) -> None:
    """Refuse a split that cannot choose a threshold: one without gold answers (every question unanswerable, as a
    test split without labels reads), or without no-answer probabilities."""
    require_probabilities(results, where)
    if not results["has_answer"].any():
        raise InputError(
            f"{where}: no question of it has a gold answer, so no threshold can be chosen there; calibrate on a split "
            "with gold answers (--calibrate_on validation), or give one with --no_answer_threshold"
        )


def summarize_calibration(task, results: pd.DataFrame, thresholds, source: str) -> dict:
    """What metrics.json records of the threshold: where it came from, itself, the metrics under it (``calibrated_``)
    and the ceiling of the best threshold on these rows themselves (``oracle_``, with its threshold)."""
    oracle = choose_thresholds(task, results)
    out = {"threshold_source": source, "no_answer_threshold": _rounded(thresholds)}
    out.update(calibrated_metrics(task, results, thresholds, CALIBRATED))
    out.update(calibrated_metrics(task, results, oracle, ORACLE))
    out[f"{ORACLE}threshold"] = _rounded(oracle)
    return out


def _rounded(thresholds):
    if isinstance(thresholds, dict):
        return {k: round(v, 6) for k, v in thresholds.items()}
    return round(float(thresholds), 6)


def write_field_files(results: pd.DataFrame, folder: str | os.PathLike) -> list[Path]:
    """The official SQuAD v2 script's inputs beside results.csv: ``predictions.json`` (id → the greedy answer, ""
    for none: the raw scores), ``na_prob.json`` (id → no-answer probability, the greedy decision where the value was
    never reached) and, where best answers were decoded, ``predictions_best.json`` (id → the answer each row gives
    when it answers): with ``na_prob.json`` and ``--na-prob-thresh T`` the calibrated scores, and its ``best_*`` the
    oracle ceiling."""
    folder = Path(folder)
    ids = results["id"].astype(str)
    greedy = [p if found and not a else "" for p, found, a in zip(
        results["parsed_answer"], results["answer_found"], results["abstained"], strict=True)]  # fmt: skip
    written = [folder / "predictions.json", folder / "na_prob.json"]
    atomic_write_json(written[0], dict(zip(ids, greedy, strict=True)))
    probs = decision_probs(results)
    atomic_write_json(written[1], {i: float(p) for i, p in zip(ids, probs, strict=True)})
    if "best_answer" in results.columns and (results["best_answer"] != "").any():
        written.append(folder / "predictions_best.json")
        atomic_write_json(written[2], dict(zip(ids, answered_values(results), strict=True)))
    return written


def read_threshold(value: str | float | None) -> float | None:
    """A ``--no_answer_threshold`` value, checked to be a probability."""
    if value is None:
        return None
    value = float(value)
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise InputError(f"--no_answer_threshold {value}: give a probability in [0, 1] (e.g. 0.5)")
    return value


def load_thresholds(path: str | os.PathLike) -> float | dict[str, float]:
    """The threshold(s) a calibration recorded (``calibration.json``)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["threshold"]

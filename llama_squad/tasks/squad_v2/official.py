"""Official SQuAD v2 scoring (same numbers as evaluate-v2.0.py), importable and as a drop-in CLI.

    python -m llama_squad.squad_eval ../shared/data/squad_v2/dev-v2.0.json predictions.json --out_file scores.json

``predictions.json`` maps each question id to the predicted answer text (``""``: no answer). The scores are printed
as JSON (also when ``--out_file`` writes them to a file, unlike the official script), with the official keys:
``exact``, ``f1``, ``total``, ``HasAns_*``, ``NoAns_*``, and with ``--na_prob_file`` also ``best_exact``,
``best_exact_thresh``, ``best_f1``, ``best_f1_thresh``. The official option spellings (``--out-file/-o``,
``--na-prob-file/-n``, ``--na-prob-thresh/-t``) work too; the precision-recall plots (``--out-image-dir``) are not
reproduced. Unlike the official script, a question without a prediction is an error (``--allow_missing`` scores it
as the empty answer), and bad input files stop with a one-line error naming them.
"""

import argparse
import json
import logging
import re
import string
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from llama_squad.cli import exit_code_of, parse_strictly, setup_logging
from llama_squad.files import InputError, atomic_write_json, read_json

logger = logging.getLogger(__name__)

_PUNCTUATION = re.compile("[" + re.escape(string.punctuation) + "]")  # ASCII punctuation, as the official script
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_MAX_IDS_SHOWN = 10

# A question's distinct gold answers prepared once: normalized text → its tokens.
_Golds = dict[str, list[str]]


class MissingPredictionsError(InputError):
    """Questions of the dataset without a prediction; ``missing`` lists their ids."""

    def __init__(self, missing: list[str], total: int):
        self.missing = missing
        super().__init__(
            f"{len(missing)} of {total} questions have no prediction (ids: {_show_ids(missing)}); "
            "pass --allow_missing (allow_missing=True) to score them as empty answers"
        )


class MissingNaProbsError(InputError):
    """Questions of the dataset without a no-answer probability; ``missing`` lists their ids."""

    def __init__(self, missing: list[str], total: int):
        self.missing = missing
        super().__init__(
            f"{len(missing)} of {total} questions have no no-answer probability (ids: {_show_ids(missing)}); "
            "give one for every question id"
        )


def _show_ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_MAX_IDS_SHOWN])
    return shown + (f", ... ({len(ids) - _MAX_IDS_SHOWN} more)" if len(ids) > _MAX_IDS_SHOWN else "")


# ---------------------------------------------------------------------------------------------------- one answer


def normalize_answer(s: str) -> str:
    """The official normalization: lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = _PUNCTUATION.sub("", s.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def get_tokens(s: str) -> list[str]:
    """The normalized tokens of ``s`` (``""`` → ``[]``)."""
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    """1 when the normalized texts are equal, else 0."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def _f1(n_same: int, n_pred: int, n_gold: int) -> float:
    """Token F1 from the overlap size, in the official order of operations (same floating-point result)."""
    precision = 1.0 * n_same / n_pred
    recall = 1.0 * n_same / n_gold
    return (2 * precision * recall) / (precision + recall)


def compute_f1(a_gold: str, a_pred: str) -> float:
    """Token-level F1 of the normalized texts (multiset overlap); when either has no token, 1 if both have none."""
    gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
    if not gold_toks or not pred_toks:
        return int(gold_toks == pred_toks)
    n_same = sum((Counter(gold_toks) & Counter(pred_toks)).values())
    return _f1(n_same, len(pred_toks), len(gold_toks)) if n_same else 0


def gold_answers(answers: Sequence[str]) -> list[str]:
    """The answers a prediction is scored against: those that normalize to non-empty text, else ``[""]``.

    ``[""]`` makes a question unanswerable: only a prediction that normalizes to nothing is right.
    """
    return [a for a in answers if normalize_answer(a)] or [""]


def _prepare_golds(answers: Sequence[str]) -> _Golds:
    """The distinct normalized gold answers of a question (the gold rule of :func:`gold_answers`) with their tokens."""
    golds: _Golds = {}
    for answer in dict.fromkeys(answers):  # annotators often give the same text
        normalized = normalize_answer(answer)
        if normalized and normalized not in golds:
            golds[normalized] = normalized.split()
    return golds or {"": []}


def _score(prediction: str, golds: _Golds) -> tuple[float, float]:
    """(exact, f1) of one prediction: the best over the gold answers."""
    normalized = normalize_answer(prediction)
    if normalized in golds:  # exact match, hence F1 1 as well
        return 1.0, 1.0
    pred_tokens = normalized.split()
    if not pred_tokens:  # no gold answer is empty here: F1 is 0 against each
        return 0.0, 0.0
    pred_counts = Counter(pred_tokens)
    best = 0.0
    for gold_tokens in golds.values():
        n_same = sum((Counter(gold_tokens) & pred_counts).values())
        if n_same:
            best = max(best, _f1(n_same, len(pred_tokens), len(gold_tokens)))
    return 0.0, best


def score_prediction(prediction: str, gold_answers: Sequence[str]) -> tuple[float, float]:
    """(exact, f1), each in [0, 1], of ``prediction`` against a question's gold answer texts (``[]``: unanswerable).

    The official rule: the best over the gold answers that normalize to non-empty text; with none, the question is
    unanswerable and only an empty prediction scores 1.
    """
    return _score(prediction, _prepare_golds(gold_answers))


def score_predictions(
    predictions: Sequence[str], gold_lists: Sequence[Sequence[str]]
) -> tuple[list[float], list[float]]:
    """(exact scores, f1 scores) of many predictions, each against its own gold answer texts.

    Each gold answer is normalized once per question (duplicates once), each prediction once.
    """
    if len(predictions) != len(gold_lists):
        raise ValueError(f"{len(predictions)} predictions but {len(gold_lists)} lists of gold answers: give one each")
    exact, f1 = [], []
    for prediction, answers in zip(predictions, gold_lists, strict=True):
        e, f = _score(prediction, _prepare_golds(answers))
        exact.append(e)
        f1.append(f)
    return exact, f1


# ---------------------------------------------------------------------------------------------------- a dataset


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def gold_answers_by_id(dataset: list) -> dict[str, list[str]]:
    """Every question id of the official ``data`` list → its gold answer texts (``[]``: unanswerable), in file order.

    A repeated id keeps its first position and its last answers, as the official script does.
    """
    if not isinstance(dataset, list):
        raise InputError(f"expected the 'data' list of articles, found {_json_type(dataset)}")
    golds: dict[str, list[str]] = {}
    for a, article in enumerate(dataset):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise InputError(f"article {a} has no 'paragraphs' list")
        for p, paragraph in enumerate(paragraphs):
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(qas, list):
                raise InputError(f"article {a}, paragraph {p} has no 'qas' list")
            for q, qa in enumerate(qas):
                where = f"article {a}, paragraph {p}, question {q}"
                qid = qa.get("id") if isinstance(qa, dict) else None
                if not isinstance(qid, str):
                    raise InputError(f"{where} has no string 'id'")
                answers = qa.get("answers")
                if not isinstance(answers, list) or not all(
                    isinstance(x, dict) and isinstance(x.get("text"), str) for x in answers
                ):
                    raise InputError(f"{where} (id {qid!r}) has no 'answers' list of {{'text': ...}} objects")
                golds[qid] = [x["text"] for x in answers]
    if not golds:
        raise InputError("the dataset holds no questions")
    return golds


def check_predictions(predictions) -> dict[str, str]:
    """``predictions`` if it maps question ids to answer strings, else :class:`InputError` naming the first bad id."""
    if not isinstance(predictions, dict):
        raise InputError(
            f"expected a JSON object mapping question ids to answer strings, found {_json_type(predictions)}"
        )
    for qid, answer in predictions.items():
        if not isinstance(qid, str) or not isinstance(answer, str):
            raise InputError(
                f"the prediction for id {qid!r} is {_json_type(answer)}, not a string: "
                'every prediction must be the answer text ("" for no answer)'
            )
    return predictions


def check_na_probs(na_probs) -> dict[str, float]:
    """``na_probs`` if it maps question ids to numbers in [0, 1], else :class:`InputError` naming the first bad id.

    NaN, infinities and numbers outside [0, 1] (which Python's JSON reader accepts) are refused: the threshold search
    sorts by probability, and a NaN would silently scramble that order.
    """
    if not isinstance(na_probs, dict):
        raise InputError(f"expected a JSON object mapping question ids to probabilities, found {_json_type(na_probs)}")
    for qid, prob in na_probs.items():
        if isinstance(prob, bool) or not isinstance(prob, int | float):
            raise InputError(f"the no-answer probability for id {qid!r} is {_json_type(prob)}, not a number")
        if not 0 <= prob <= 1:  # False for NaN too
            raise InputError(
                f"the no-answer probability for id {qid!r} is {json.dumps(prob)}, not a number in [0, 1]: "
                "give every question a probability between 0 and 1"
            )
    return na_probs


def _percentages(exact: list[float], f1: list[float], prefix: str = "") -> dict[str, float]:
    total = len(exact)
    return {
        f"{prefix}exact": 100.0 * sum(exact) / total,
        f"{prefix}f1": 100.0 * sum(f1) / total,
        f"{prefix}total": total,
    }


def _best_threshold(
    qids: list[str], predictions: dict[str, str], scores: list[float], na_probs: dict[str, float], has_ans: list[bool]
) -> tuple[float, float]:
    """The official search for the no-answer threshold that maximizes the score: (best score in %, threshold).

    Start from abstaining everywhere (right on every unanswerable question), then answer the questions in order of
    increasing no-answer probability: an answerable one gains its score, an unanswerable one loses 1 if the
    prediction is non-empty.
    """
    score_of = dict(zip(qids, scores, strict=True))
    has_ans_of = dict(zip(qids, has_ans, strict=True))
    current = best = sum(not h for h in has_ans)
    best_thresh = 0.0
    for qid in sorted(na_probs, key=na_probs.get):  # stable: ties keep the file's order
        if qid not in score_of:
            continue
        if has_ans_of[qid]:
            current += score_of[qid]
        elif predictions.get(qid, ""):
            current -= 1
        if current > best:
            best, best_thresh = current, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def evaluate(
    dataset: list,
    predictions: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
    allow_missing: bool = False,
) -> dict:
    """The official SQuAD v2 scores (in %) of ``predictions`` on ``dataset``, the ``data`` list of the official JSON.

    Keys, in the official order: ``exact``, ``f1``, ``total``, then ``HasAns_exact``, ``HasAns_f1``,
    ``HasAns_total`` and ``NoAns_*`` (each only when that subset is non-empty; a question has an answer when its
    ``answers`` list is non-empty), and with ``na_probs`` also ``best_exact``, ``best_exact_thresh``, ``best_f1``,
    ``best_f1_thresh``. A question whose no-answer probability exceeds ``na_prob_thresh`` counts as answered "no
    answer" (1 if it has none, else 0). A question without a prediction raises :class:`MissingPredictionsError`,
    or with ``allow_missing`` is scored as the empty answer (the official script silently drops it). Predictions
    for ids not in the dataset are ignored.
    """
    golds = gold_answers_by_id(dataset)
    check_predictions(predictions)
    qids = list(golds)
    missing = [qid for qid in qids if qid not in predictions]
    if missing and not allow_missing:
        raise MissingPredictionsError(missing, len(qids))
    if missing:
        logger.warning("%d of %d questions have no prediction: scored as empty answers", len(missing), len(qids))
    extra = len(predictions) - (len(qids) - len(missing))
    if extra:
        logger.warning("%d predictions are for ids not in the dataset: ignored", extra)
    if na_probs is not None:
        check_na_probs(na_probs)
        missing_probs = [qid for qid in qids if qid not in na_probs]
        if missing_probs:
            raise MissingNaProbsError(missing_probs, len(qids))

    exact_raw, f1_raw = score_predictions([predictions.get(qid, "") for qid in qids], [golds[qid] for qid in qids])
    has_ans = [bool(golds[qid]) for qid in qids]
    probs = [0.0] * len(qids) if na_probs is None else [na_probs[qid] for qid in qids]
    abstains = [p > na_prob_thresh for p in probs]
    exact = [float(not h) if a else s for s, h, a in zip(exact_raw, has_ans, abstains, strict=True)]
    f1 = [float(not h) if a else s for s, h, a in zip(f1_raw, has_ans, abstains, strict=True)]

    result = _percentages(exact, f1)
    for prefix, wanted in (("HasAns_", True), ("NoAns_", False)):
        subset = [i for i, h in enumerate(has_ans) if h is wanted]
        if subset:
            result.update(_percentages([exact[i] for i in subset], [f1[i] for i in subset], prefix))
    if na_probs is not None:
        result["best_exact"], result["best_exact_thresh"] = _best_threshold(
            qids, predictions, exact_raw, na_probs, has_ans
        )
        result["best_f1"], result["best_f1_thresh"] = _best_threshold(qids, predictions, f1_raw, na_probs, has_ans)
    return result


# ---------------------------------------------------------------------------------------------------- files and CLI


def _read(path: str | Path, what: str):
    try:
        return read_json(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read the {what} ({e.strerror or e})") from None


def _named(path: str | Path, check, value):
    """``check(value)``, with the file named in its error."""
    try:
        return check(value)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def read_squad_data(path: str | Path) -> list:
    """The ``data`` list of an official SQuAD JSON file, validated; errors name the file and the record."""
    content = _read(path, "dataset")
    if not isinstance(content, dict) or not isinstance(content.get("data"), list):
        raise InputError(f"{path}: not a SQuAD JSON file (expected an object with a 'data' list of articles)")
    _named(path, gold_answers_by_id, content["data"])
    return content["data"]


def read_predictions(path: str | Path) -> dict[str, str]:
    """A predictions file (question id → answer text), validated; errors name the file and the id."""
    return _named(path, check_predictions, _read(path, "predictions"))


def read_na_probs(path: str | Path) -> dict[str, float]:
    """A no-answer probability file (question id → probability), validated; errors name the file and the id."""
    return _named(path, check_na_probs, _read(path, "no-answer probabilities"))


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m llama_squad.squad_eval`` (official spellings accepted as aliases)."""
    from llama_squad.cli import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="python -m llama_squad.squad_eval", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("data_file", help="Official SQuAD v2 JSON with the gold answers, e.g. dev-v2.0.json.")
    parser.add_argument("pred_file", help='JSON object: question id → predicted answer text ("" for no answer).')
    parser.add_argument(
        "--out_file", "--out-file", "-o", help="Also write the scores (JSON) to this file, atomically."
    )
    parser.add_argument(
        "--na_prob_file", "--na-prob-file", "-n", help="JSON object: question id → probability of no answer."
    )
    parser.add_argument(
        "--na_prob_thresh",
        "--na-prob-thresh",
        "-t",
        type=float,
        default=1.0,
        help="Score a question as answered 'no answer' when its no-answer probability is above this (default 1.0).",
    )
    parser.add_argument(
        "--allow_missing",
        "--allow-missing",
        action="store_true",
        help="Score questions without a prediction as empty answers instead of stopping.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Score a predictions file: print the scores as JSON, also to ``--out_file``. 0 on success, 1 on bad input."""
    args = parse_strictly(build_parser(), argv)
    setup_logging()
    try:
        dataset = read_squad_data(args.data_file)
        predictions = read_predictions(args.pred_file)
        na_probs = read_na_probs(args.na_prob_file) if args.na_prob_file else None
        try:
            result = evaluate(dataset, predictions, na_probs, args.na_prob_thresh, args.allow_missing)
        except MissingPredictionsError as e:
            raise InputError(f"{args.pred_file}: {e}") from None
        except MissingNaProbsError as e:
            raise InputError(f"{args.na_prob_file}: {e}") from None
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        if args.out_file:
            atomic_write_json(args.out_file, result)
            logger.info("wrote %s", args.out_file)
    except Exception as e:  # bad input, a full disk: one line naming the file and the fix; a bug: its traceback
        return exit_code_of(e, lambda m: sys.stderr.write(f"squad_eval: error: {m}\n"), args.out_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())

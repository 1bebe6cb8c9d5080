"""MultiWOZ DST scoring: value normalization (strict, fuzzy, TRADE's), the results rows of an answer, the metrics.

Strict matching is the headline; fuzzy matching and TRADE's label normalization are reported beside it. All three
are fixed rules written down (here, and in :mod:`.trade_labels` for TRADE's), never derived from data. A slot is
*set* when its gold list of values is non-empty; the prediction of a slot is *empty* when the model answered ``"?"``
or ``""``, or when no answer could be recovered from its output.

Strict normalization (:func:`normalize_value`): lower case; surrounding whitespace stripped and inner runs of
whitespace collapsed to one space; a time ``H:MM`` zero-padded to ``HH:MM`` ("9:30" → "09:30"). A prediction is
strictly right when its normalized form equals that of any gold alternative (MultiWOZ 2.2 lists several; 2.1's
``a|b`` values are read as alternatives too), or when both the prediction and the gold are empty.

Fuzzy normalization (:func:`fuzzy_value`), on top of the strict one:

- "dontcare" spellings: dont care, don't care, do n't care, do not care, doesn't matter, does not matter,
  no preference, any → dontcare; "none" and "not mentioned" → empty (not set);
- times: 12-hour clock and dots ("5:45pm", "5.45 pm", "5 pm" → "17:45", "17:45", "17:00"; "noon" → "12:00"), and a
  leading after/before/by/at/around/about dropped ("after 15:45" → "15:45");
- counts: number words one..ten → digits, and a trailing unit dropped ("2 people", "3 nights", "4 stars" → "2"...);
- parking and internet: "free" → "yes" (MultiWOZ 2.1 uses both for the same fact);
- names: "&" → "and", "center" → "centre", a few well-known misspellings (:data:`FUZZY_SPELLINGS`), a leading
  "the" dropped, and finally every character that is not a letter, digit or ":" removed, so that spacing and
  punctuation variants agree ("guest house" / "guesthouse", "night club" / "nightclub", "christ's" / "christs",
  "alpha-milton" / "alpha milton").

TRADE's label normalization (:func:`~llama_squad.tasks.multiwoz.trade_labels.normalize_label_trade`, its rules and
sources in :mod:`.trade_labels`) is the convention in which MultiWOZ 2.1 papers report JGA; it is applied to the gold
and the predicted values alike, and a prediction is right when its label equals the label of a gold alternative
(both "not set" included).

A numeric JSON answer (``{"answer": 2.0}``, ``{"stars": 4}``) is read as the gold writes the same number ("2.0" →
"2" when a gold alternative is "2"), so that it scores as the string would; any other number keeps its JSON text.
"""

import functools
import json
import re
from collections import Counter

import pandas as pd

from llama_squad.answers import NO_ANSWER, ParsedAnswer, parse_json_answer, parse_json_output
from llama_squad.tasks.common import percent
from llama_squad.tasks.multiwoz.prompts import slot_question
from llama_squad.tasks.multiwoz.schema import DOMAINS, DONTCARE, DONTCARE_GOLD_VALUES, SLOT_NAMES, default_slots
from llama_squad.tasks.multiwoz.trade_labels import normalize_label_trade

NO_VALUE = "?"
# goal_domains: the domains of the dialogue's goal, space-separated (the dataset's column; per-domain JGA picks by it)
EXTRA_RESULT_COLUMNS = ("dialogue_id", "turn", "domain", "slot", "fuzzy_exact", "trade_exact", "goal_domains")

_WHITESPACE = re.compile(r"\s+")
_SHORT_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")

FUZZY_DONTCARE = DONTCARE_GOLD_VALUES | {"doesn't matter", "does not matter", "no preference", "any"}
FUZZY_EMPTY = frozenset({"", NO_VALUE, "none", "not mentioned"})
NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
# Common misspellings of MultiWOZ values (general English spelling fixes, not a list of test-set answers).
FUZZY_SPELLINGS = {
    "center": "centre",
    "portugese": "portuguese",
    "mediteranean": "mediterranean",
    "asain": "asian",
    "gueshouse": "guesthouse",
    "moderately": "moderate",
    "mutliple sports": "multiple sports",
    "pool": "swimming pool",
}
YES_NO_SLOTS = frozenset({"hotel-parking", "hotel-internet"})
_FUZZY_TIME = re.compile(
    r"^(?:after|before|by|at|around|about)?\s*(\d{1,2})(?:[:.](\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?$"
)
_COUNT = re.compile(r"^(\d+)\s+(?:people|persons?|nights?|days?|stars?|tickets?)$")
_NOT_ALNUM = re.compile(r"[^a-z0-9:]+")
_JSON_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?$")
_DECIMAL = re.compile(r"^[+-]?\d+(?:\.\d+)?$")


# ---------------------------------------------------------------------------------------------------- values


def normalize_value(value: str) -> str:
    """Strict form of a slot value: lower case, whitespace collapsed, ``H:MM`` → ``HH:MM``; ``"?"`` → ``""``."""
    text = _WHITESPACE.sub(" ", value.lower()).strip()
    if text == NO_VALUE:
        return ""
    match = _SHORT_TIME.match(text)
    if match and len(match.group(1)) == 1:
        return f"0{text}"
    return text


def _fuzzy_time(text: str) -> str | None:
    """``HH:MM`` of a time written loosely ("5:45pm", "after 9.30"), or None when ``text`` is not a time."""
    if text in ("noon", "midday"):
        return "12:00"
    if text == "midnight":
        return "00:00"
    match = _FUZZY_TIME.match(text)
    if match is None:
        return None
    hours, minutes, meridiem = match.groups()
    if minutes is None and meridiem is None:
        return None  # a bare number is a count, not a time
    h, m = int(hours), int(minutes or 0)
    if meridiem:
        if h < 1 or h > 12:
            return None
        h = h % 12 + (12 if meridiem.startswith("p") else 0)
    if h > 23 or m > 59:
        return None
    return f"{h:02d}:{m:02d}"


def fuzzy_value(value: str, slot: str = "") -> str:
    """Lenient form of a slot value (module docstring): equal forms count as the same value; ``""`` is not set."""
    text = normalize_value(value)
    if text in FUZZY_EMPTY:
        return ""
    if text in FUZZY_DONTCARE:
        return DONTCARE
    time = _fuzzy_time(text)
    if time is not None:
        return time
    text = NUMBER_WORDS.get(text, text)
    match = _COUNT.match(text)
    if match:
        return match.group(1)
    if slot in YES_NO_SLOTS and text == "free":
        return "yes"
    text = text.replace("&", " and ")
    text = FUZZY_SPELLINGS.get(text, text)
    text = " ".join(FUZZY_SPELLINGS.get(word, word) for word in text.split())
    if text.startswith("the "):
        text = text[4:]
    return _NOT_ALNUM.sub("", text)


def token_f1(prediction: str, gold: str) -> float:
    """Word-overlap F1 of two strictly normalized values (both empty: 1; one empty: 0)."""
    pred_words, gold_words = prediction.split(), gold.split()
    if not pred_words or not gold_words:
        return float(pred_words == gold_words)
    common = sum((Counter(pred_words) & Counter(gold_words)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_words), common / len(gold_words)
    return 2 * precision * recall / (precision + recall)


def score_value(slot: str, prediction: str | None, gold: list[str]) -> dict:
    """The scores of one slot: ``prediction`` (None: nothing recovered, counts as not set) against ``gold``.

    Returns ``exact`` (strict match, 0/1), ``fuzzy_exact`` (fuzzy match, 0/1), ``trade_exact`` (match of TRADE's
    labels, 0/1: :func:`trade_match`), ``f1`` (best word F1 over the gold alternatives) and ``has_answer`` (the gold
    sets the slot).
    """
    strict = normalize_value(prediction) if prediction is not None else ""
    trade = trade_match(slot, prediction, gold)
    if not gold:
        return {
            "exact": float(strict == ""),
            "fuzzy_exact": float(prediction is None or fuzzy_value(prediction, slot) == ""),
            "trade_exact": trade,
            "f1": float(strict == ""),
            "has_answer": False,
        }
    golds = [normalize_value(g) for g in gold]
    fuzzy = fuzzy_value(prediction, slot) if prediction is not None else ""
    return {
        "exact": float(strict != "" and strict in golds),
        "fuzzy_exact": float(fuzzy != "" and any(fuzzy == fuzzy_value(g, slot) for g in gold)),
        "trade_exact": trade,
        "f1": max(token_f1(strict, g) for g in golds),
        "has_answer": True,
    }


def trade_match(slot: str, prediction: str | None, gold: list[str]) -> float:
    """1.0 when the TRADE label of ``prediction`` (None: not set) is that of a gold alternative, else 0.0.

    A gold slot is not set when it has no alternatives (or when TRADE's rules make each of them "not set", as
    hotel-type "bed and breakfast"); a prediction that is not set is then right.
    """
    label = normalize_label_trade(prediction, slot) if prediction is not None else ""
    return float(label in ({normalize_label_trade(g, slot) for g in gold} or {""}))


def numeric_as_gold(number: str, gold: list[str]) -> str:
    """The JSON text of a number (``"2.0"``) as the first gold alternative that writes the same number does ("2");
    unchanged when none does."""
    value = float(number)
    for g in gold:
        if _DECIMAL.match(g.strip()) and float(g) == value:
            return g
    return number


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------------- results rows


def _value_of(obj: dict | None, slot: str, gold: list[str]) -> str | None:
    """The predicted value of ``slot`` in a domain answer (short key, or the full slot name), as text (a number as
    ``gold`` writes it: :func:`numeric_as_gold`), or None."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(slot.split("-", 1)[1], obj.get(slot))
    if isinstance(value, str):
        return value
    if _is_number(value):
        return numeric_as_gold(json.dumps(value), gold)
    return None


def _slot_answer(raw_output: str, gold: list[str]) -> ParsedAnswer:
    """The answer of a slot question (:func:`~llama_squad.answers.parse_json_answer`), a numeric JSON answer written
    as ``gold`` writes the same number."""
    parsed = parse_json_answer(raw_output)
    if parsed.answer is None or parsed.valid_json or not _JSON_NUMBER.match(parsed.answer):
        return parsed
    output = parse_json_output(raw_output)  # was the answer a JSON number, or a string of digits?
    if isinstance(output.value, dict) and _is_number(output.value.get("answer")):
        return ParsedAnswer(numeric_as_gold(parsed.answer, gold), parsed.valid_json)
    return parsed


@functools.cache
def _slot_questions() -> dict[str, str]:
    """The question of each slot (built-in schema): a domain answer's results rows say which slot they score."""
    return {slot.name: slot_question(slot, False) for slot in default_slots()}


def score_output(raw_output: str, example: dict) -> list[dict]:
    """The scored results rows of one generated answer: one per slot asked (one in slot granularity).

    Unparseable output, or a slot missing from a domain answer, counts as "not set" ("?"). A numeric JSON answer is
    recorded (``parsed_answer``) and scored as the gold writes the same number (module docstring).
    """
    common = {
        "dialogue_id": example["dialogue_id"],
        "turn": example["turn"],
        "domain": example["domain"],
        "goal_domains": example.get("goal_domains", ""),  # datasets built before the column: "" (see summarize)
    }
    if "slots" not in example:
        parsed = _slot_answer(raw_output, list(example["answers"]))
        scores = score_value(example["slot"], parsed.answer, list(example["answers"]))
        return [
            {
                **common,
                "slot": example["slot"],
                "parsed_answer": parsed.answer if parsed.found else "",
                "valid_json": parsed.valid_json,
                "answer_found": parsed.found,
                "abstained": parsed.abstained,
                **scores,
            }
        ]
    parsed = parse_json_output(raw_output)
    questions = _slot_questions()
    rows = []
    for name, gold in zip(example["slots"], example["slot_answers"], strict=True):
        value = _value_of(parsed.value, name, list(gold))
        rows.append(
            {
                **common,
                "id": f"{example['id']}/{name}",
                "question": questions.get(name, name),
                "answers": list(gold),
                "slot": name,
                "parsed_answer": value if value is not None else "",
                "valid_json": parsed.valid_json,
                "answer_found": value is not None,
                "abstained": value is not None and value.strip() == NO_ANSWER,
                **score_value(name, value, list(gold)),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------- summary


def _as_bool(column: pd.Series) -> pd.Series:
    """A 0/1, True/False or "True"/"1.0" column (as read back from CSV) as booleans."""
    if column.dtype == bool:
        return column
    if column.dtype == object:
        text = column.astype(str).str.strip()
        return text.isin(["True", "true"]) | (pd.to_numeric(text, errors="coerce").fillna(0) >= 0.5)
    return column.astype(float) >= 0.5


def summarize(results: pd.DataFrame) -> dict[str, float]:
    """The DST metrics of a run, in percent (``total``/``examples``/``turns`` are counts).

    - ``jga`` / ``jga_fuzzy`` / ``jga_trade``: joint goal accuracy, the share of turns whose 30 slots are all right
      (strict / fuzzy / under TRADE's label normalization, :mod:`.trade_labels`). Computed over *complete* turns
      only: those with a results row for each of the 30 slots (``complete_turns`` of ``turns``; a run cut short by
      ``--limit`` leaves some turns incomplete).
    - ``jga_<domain>`` / ``jga_trade_<domain>``: the same (strict / TRADE's) over that domain's slots, on the
      complete turns of the dialogues whose goal names the domain (``turns_<domain>`` of them), as TRADE's
      per-domain test (``-onlyd``: TRADE's domains of a dialogue are its goal's). A dialogue whose goal names none
      of the five (results of a dataset built before the ``goal_domains`` column, data without goals) is placed by
      its gold states instead: in each domain that its gold state sets a slot of at some turn.
    - ``slot_accuracy`` / ``slot_accuracy_fuzzy``: share of slot rows right (every row counts, empty or not).
    - ``slot_precision`` / ``slot_recall`` / ``slot_f1``: over non-empty values, micro-averaged: a true positive is
      a non-empty prediction that matches a set gold slot; precision = TP / non-empty predictions, recall = TP / set
      gold slots ("dontcare" is a value like any other; a wrong value is both a false positive and a false negative);
      F1 is 0 when there is no true positive (precision is undefined, NaN, when nothing is predicted).
    - ``value_f1``: mean word-overlap F1 of the predicted and gold values (partial credit).
    - ``valid_json``: share of generations (distinct ``example_id``) whose output was exactly one JSON object;
      ``answer_found``: share of slot rows for which a value could be recovered at all.
    - ``abstain_precision``: share of "?" answers given to unset slots; ``abstain_recall``: share of unset slots
      answered "?".
    """
    n = len(results)
    if n == 0:
        return {"total": 0}
    exact = _as_bool(results["exact"])
    fuzzy = _as_bool(results["fuzzy_exact"]) if "fuzzy_exact" in results else exact
    trade = _as_bool(results["trade_exact"]) if "trade_exact" in results else _trade_of_rows(results)
    has_answer = _as_bool(results["has_answer"])
    abstained = _as_bool(results["abstained"])
    predicted = ~results["parsed_answer"].astype(str).str.strip().isin(["", NO_VALUE])
    precision, recall, f1 = _slot_precision_recall_f1(exact, has_answer, predicted)
    frame = _tracked_slots(results, exact, fuzzy, trade, has_answer)
    by_turn = frame.groupby(["dialogue_id", "turn"], sort=False)
    turns = by_turn.agg(slots=("slot", "size"), exact=("exact", "all"), fuzzy=("fuzzy", "all"), trade=("trade", "all"))
    complete = turns[turns["slots"] == len(SLOT_NAMES)]
    metrics = {
        "total": n,
        "examples": int(results["example_id"].nunique()) if "example_id" in results else n,
        "turns": len(turns),
        "complete_turns": len(complete),
        "jga": percent(int(complete["exact"].sum()), len(complete)),
        "jga_fuzzy": percent(int(complete["fuzzy"].sum()), len(complete)),
        "jga_trade": percent(int(complete["trade"].sum()), len(complete)),
        "slot_accuracy": percent(int(exact.sum()), n),
        "slot_accuracy_fuzzy": percent(int(fuzzy.sum()), n),
        "slot_precision": precision,
        "slot_recall": recall,
        "slot_f1": f1,
        "value_f1": 100.0 * float(pd.to_numeric(results["f1"]).mean()),
        **_domain_joint_goal_accuracy(frame, set(complete.index)),
    }
    generations = results.drop_duplicates("example_id") if "example_id" in results else results
    metrics["valid_json"] = percent(int(_as_bool(generations["valid_json"]).sum()), len(generations))
    metrics["answer_found"] = percent(int(_as_bool(results["answer_found"]).sum()), n)
    metrics["abstain_precision"] = percent(int((abstained & ~has_answer).sum()), int(abstained.sum()))
    metrics["abstain_recall"] = percent(int((abstained & ~has_answer).sum()), int((~has_answer).sum()))
    return metrics


def _slot_precision_recall_f1(exact: pd.Series, has_answer: pd.Series, predicted: pd.Series) -> tuple[float, ...]:
    """Micro-averaged precision, recall and F1 over non-empty values, in percent (see :func:`summarize`)."""
    true_positives = int((exact & has_answer & predicted).sum())
    precision = percent(true_positives, int(predicted.sum()))
    recall = percent(true_positives, int(has_answer.sum()))
    if true_positives:
        f1 = 2 * precision * recall / (precision + recall)
    else:  # no predicted or no gold values at all: no true positive, F1 0 (undefined only with neither)
        f1 = 0.0 if predicted.any() or has_answer.any() else float("nan")
    return precision, recall, f1


def _trade_of_rows(results: pd.DataFrame) -> pd.Series:
    """``trade_exact`` of results written before the column: from each row's parsed answer and gold."""
    found = _as_bool(results["answer_found"])
    return pd.Series(
        [
            trade_match(slot, str(answer) if ok else None, list(gold)) >= 0.5
            for slot, answer, ok, gold in zip(
                results["slot"].astype(str),
                results["parsed_answer"].fillna(""),
                found,
                results["answers"],
                strict=True,
            )
        ],
        index=results.index,
    )


def _tracked_slots(
    results: pd.DataFrame, exact: pd.Series, fuzzy: pd.Series, trade: pd.Series, has_answer: pd.Series
) -> pd.DataFrame:
    """One row per (dialogue, turn, tracked slot) with its domain, its dialogue's goal domains and its strict, fuzzy
    and TRADE match."""
    goal = results["goal_domains"] if "goal_domains" in results else pd.Series("", index=results.index)
    frame = pd.DataFrame(
        {
            "dialogue_id": results["dialogue_id"].astype(str),
            "turn": results["turn"].astype(str),
            "slot": results["slot"].astype(str),
            "domain": results["slot"].astype(str).str.split("-", n=1).str[0],
            "goal_domains": goal.fillna("").astype(str),
            "exact": exact,
            "fuzzy": fuzzy,
            "trade": trade,
            "has_answer": has_answer,
        }
    ).drop_duplicates(["dialogue_id", "turn", "slot"])
    return frame[frame["slot"].isin(SLOT_NAMES)]


def _dialogue_domains(frame: pd.DataFrame) -> dict[str, set[str]]:
    """The domains of each dialogue (see :func:`summarize`): its goal's, or where its goal names none of the five,
    those its gold state sets a slot of."""
    goals = frame.groupby("dialogue_id", sort=False)["goal_domains"].first().str.split().map(set)
    in_state = frame[frame["has_answer"]].groupby("dialogue_id", sort=False)["domain"].agg(set)
    return {dialogue: (goal & set(DOMAINS)) or in_state.get(dialogue, set()) for dialogue, goal in goals.items()}


def _domain_joint_goal_accuracy(frame: pd.DataFrame, complete_keys: set) -> dict[str, float]:
    """``jga_<domain>``, ``jga_trade_<domain>`` and ``turns_<domain>`` of each domain (see :func:`summarize`)."""
    metrics = {}
    domains = _dialogue_domains(frame)
    for domain in DOMAINS:
        dialogues = {dialogue for dialogue, named in domains.items() if domain in named}
        rows = frame[(frame["domain"] == domain) & frame["dialogue_id"].isin(dialogues)]
        per_turn = rows.groupby(["dialogue_id", "turn"], sort=False)[["exact", "trade"]].all()
        per_turn = per_turn.loc[[key in complete_keys for key in per_turn.index]]
        metrics[f"jga_{domain}"] = percent(int(per_turn["exact"].sum()), len(per_turn))
        metrics[f"jga_trade_{domain}"] = percent(int(per_turn["trade"].sum()), len(per_turn))
        metrics[f"turns_{domain}"] = len(per_turn)
    return metrics

"""SQuAD v2: read the official JSON, a Hub dataset or JSON Lines; build chat prompts; score answers officially."""

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from datasets import Dataset, DatasetDict

from llama_squad.answers import NO_ANSWER, format_json_answer, parse_json_answer
from llama_squad.io import InputError, iter_jsonl, read_json
from llama_squad.squad_eval import normalize_answer, score_prediction
from llama_squad.tasks.common import DatasetArguments

logger = logging.getLogger(__name__)

NAME = "squad_v2"
PROMPT_STYLES = ("single_turn", "multi_turn")
EXTRA_RESULT_COLUMNS = ("title",)

ANSWER_FORMAT = (
    'Reply with JSON only, in the form {"answer": "..."}. '
    f"If the context does not answer the question, reply {format_json_answer(NO_ANSWER)}."
)
SINGLE_TURN_INSTRUCTION = (
    "Copy from the context the shortest span that answers the question, word for word. " + ANSWER_FORMAT
)
MULTI_TURN_INSTRUCTIONS = (
    "Does the context contain the answer to the question? Reply yes or no.",
    f"Copy from the context the shortest span that answers the question, word for word. "
    f"If the context does not answer it, reply {NO_ANSWER}.",
    "Now give that answer as JSON. " + ANSWER_FORMAT,
)


@dataclass
class Arguments(DatasetArguments):
    """Options of ``create_dataset.py --task squad_v2``."""

    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training questions: official SQuAD v2 JSON (train-v2.0.json, dev-v2.0.json) or JSON Lines."
        },
    )
    test_file: str | None = field(
        default=None,
        metadata={"help": "Test questions (official JSON or JSON Lines); or carve them with --test_articles."},
    )
    hub_dataset: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset id such as rajpurkar/squad_v2: its train split trains, its validation split tests."
        },
    )
    test_articles: str | None = field(
        default=None,
        metadata={
            "help": "Carve the test split out of --train_file by article index, START:END (Python slice). "
            "25:35 with dev-v2.0.json is the dev-split protocol: train on articles 0-24, test on 25-34."
        },
    )
    validation_fraction: float = field(
        default=0.05,
        metadata={
            "help": "Fraction of the training articles held out as the validation split (whole articles; 0: none)."
        },
    )
    prompt: str = field(
        default="single_turn",
        metadata={
            "help": "single_turn: one instruction, the answer in JSON. multi_turn: is the answer there? then the "
            "span, then the JSON; every assistant turn is a training target.",
            "choices": PROMPT_STYLES,
        },
    )
    skip_invalid: bool = field(
        default=False,
        metadata={"help": "Skip (count and log) invalid records instead of stopping at the first one."},
    )
    max_train_questions: int | None = field(
        default=None, metadata={"help": "Keep only the first N training questions (quick runs)."}
    )


@dataclass(frozen=True)
class Record:
    """One SQuAD question, validated."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]  # every gold answer text, in file order; () for unanswerable
    article: int  # index of the article (title) in its source, in order of first appearance


# ---------------------------------------------------------------------------------------------------- reading


class _Validator:
    """Checks records one by one; raises on the first bad one, or counts and skips with ``skip_invalid``."""

    def __init__(self, source: str, skip_invalid: bool, seen_ids: set[str]):
        self.source = source
        self.skip_invalid = skip_invalid
        self.seen_ids = seen_ids
        self.skipped: dict[str, int] = {}

    def check(self, where: str, qid, context: str, question, answers: list[dict], is_impossible) -> str | None:
        """The problem with a record, or None when it is fine; raises unless skipping."""
        problem = None
        if not isinstance(qid, str) or not qid.strip():
            problem = ("no id", "every question needs a unique, non-empty 'id'")
        elif qid in self.seen_ids:
            problem = ("duplicate id", f"the id {qid!r} appears twice: ids must be unique across all input files")
        elif not isinstance(context, str) or not context.strip():
            problem = ("empty context", "a question needs a non-empty 'context' to answer from")
        elif not isinstance(question, str) or not question.strip():
            problem = ("empty question", "the 'question' field must be a non-empty string")
        elif is_impossible and answers:
            problem = ("is_impossible with answers", "an unanswerable question must have 'answers': []")
        else:
            for answer in answers:
                text, start = answer.get("text"), answer.get("answer_start")
                if not isinstance(text, str) or not text:
                    problem = ("answer without text", "each answer needs a non-empty 'text'")
                elif isinstance(start, int) and context[start : start + len(text)] != text:
                    found = context[start : start + len(text)]
                    problem = (
                        "answer_start mismatch",
                        f"answer_start {start} points at {found!r}, not at the answer {text!r}",
                    )
                if problem:
                    break
        if problem is None:
            self.seen_ids.add(qid)
            return None
        kind, detail = problem
        if not self.skip_invalid:
            raise InputError(
                f"{self.source}: {where}: {kind}: {detail}. "
                "Fix the record, or pass --skip_invalid to skip such records."
            )
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        return kind

    def log(self) -> None:
        if self.skipped:
            total = sum(self.skipped.values())
            details = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items()))
            logger.warning("%s: skipped %d invalid records (%s)", self.source, total, details)


def _read_official(path: Path, validator: _Validator) -> list[Record]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise InputError(
            f"{path}: not a SQuAD JSON file (expected an object with a 'data' list of articles); "
            "for one question per line, name the file *.jsonl"
        )
    records = []
    for a, article in enumerate(data["data"]):
        title = article.get("title", f"article {a}") if isinstance(article, dict) else None
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise InputError(f"{path}: article {a} ({title!r}) has no 'paragraphs' list; fix or remove the article")
        for p, paragraph in enumerate(paragraphs):
            context = paragraph.get("context")
            for q, qa in enumerate(paragraph.get("qas", [])):
                qid = qa.get("id")
                where = f"article {a} ({title!r}), paragraph {p}, question {q} (id {qid!r})"
                answers = qa.get("answers", [])
                if validator.check(where, qid, context, qa.get("question"), answers, qa.get("is_impossible", False)):
                    continue
                records.append(
                    Record(qid, str(title), context, qa["question"].strip(), tuple(x["text"] for x in answers), a)
                )
    return records


def _answers_of(row: dict) -> list[dict]:
    """Answers of a flat row: the Hub layout {"text": [...], "answer_start": [...]}, or [{text, answer_start}]."""
    answers = row.get("answers", [])
    if isinstance(answers, dict):
        texts, starts = answers.get("text", []), answers.get("answer_start", [])
        return [
            {"text": t, "answer_start": s}
            for t, s in zip(texts, list(starts) + [None] * (len(texts) - len(starts)), strict=False)
        ]
    return list(answers)


def _read_rows(rows, source: str, validator: _Validator) -> list[Record]:
    records, articles = [], {}
    for where, row in rows:
        qid = row.get("id")
        answers = _answers_of(row)
        if validator.check(f"{where} (id {qid!r})", qid, row.get("context"), row.get("question"), answers, False):
            continue
        title = str(row.get("title", ""))
        article = articles.setdefault(title, len(articles))
        records.append(
            Record(qid, title, row["context"], row["question"].strip(), tuple(x["text"] for x in answers), article)
        )
    return records


def read_squad(path: str | Path, *, skip_invalid: bool = False, seen_ids: set[str] | None = None) -> list[Record]:
    """Validated records of an official SQuAD v2 JSON file, or of a JSON Lines file (``.jsonl``), same fields."""
    path = Path(path)
    validator = _Validator(str(path), skip_invalid, set() if seen_ids is None else seen_ids)
    if path.suffix == ".jsonl":
        records = _read_rows(((f"line {n}", row) for n, row in iter_jsonl(path)), str(path), validator)
    else:
        records = _read_official(path, validator)
    validator.log()
    if not records:
        raise InputError(f"{path}: holds no valid questions")
    logger.info("%s: %d questions from %d articles", path, len(records), len({r.article for r in records}))
    return records


def read_hub_split(hub_dataset: str, split: str, validator_state: set[str], skip_invalid: bool) -> list[Record]:
    """Validated records of a split of a Hub dataset with SQuAD's fields (needs network access to the Hub)."""
    from datasets import load_dataset

    rows = load_dataset(hub_dataset, split=split)
    validator = _Validator(f"{hub_dataset}[{split}]", skip_invalid, validator_state)
    records = _read_rows(((f"row {i}", row) for i, row in enumerate(rows)), hub_dataset, validator)
    validator.log()
    return records


# ---------------------------------------------------------------------------------------------------- splitting


def parse_slice(text: str) -> slice:
    """``"25:35"`` → ``slice(25, 35)``; either end may be left out."""
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return slice(*(int(p) if p.strip() else None for p in parts))
    except ValueError:
        raise ValueError(f"--test_articles {text!r}: expected START:END, e.g. 25:35") from None


def split_by_article(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out whole articles, drawn with ``seed``: (kept, held_out). No article is in both."""
    if not 0 <= fraction < 1:
        raise ValueError(f"--validation_fraction {fraction}: must be in [0, 1)")
    articles = sorted({r.article for r in records})
    n_held = round(fraction * len(articles))
    if fraction > 0 and len(articles) > 1:
        n_held = max(1, n_held)
    held = set(random.Random(seed).sample(articles, n_held))
    return [r for r in records if r.article not in held], [r for r in records if r.article in held]


# ---------------------------------------------------------------------------------------------------- prompts


def build_messages(record: Record, prompt_style: str, system_prompt: str) -> tuple[list[dict], list[dict]]:
    """(prompt, completion) messages of one question; the target is the first gold answer, or "?"."""
    target = record.answers[0] if record.answers else NO_ANSWER
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    material = f"Context: {record.context}\n\nQuestion: {record.question}"
    if prompt_style == "single_turn":
        prompt = system + [{"role": "user", "content": f"{material}\n\n{SINGLE_TURN_INSTRUCTION}"}]
        return prompt, [{"role": "assistant", "content": format_json_answer(target)}]
    if prompt_style == "multi_turn":
        first, span, to_json = MULTI_TURN_INSTRUCTIONS
        prompt = system + [{"role": "user", "content": f"{material}\n\n{first}"}]
        completion = [
            {"role": "assistant", "content": "yes" if record.answers else "no"},
            {"role": "user", "content": span},
            {"role": "assistant", "content": target},
            {"role": "user", "content": to_json},
            {"role": "assistant", "content": format_json_answer(target)},
        ]
        return prompt, completion
    raise ValueError(f"unknown prompt style {prompt_style!r}: choose one of {', '.join(PROMPT_STYLES)}")


def to_dataset(records: list[Record], prompt_style: str, system_prompt: str) -> Dataset:
    """The chat dataset of ``records``: prompt/completion messages plus the metadata columns."""
    columns: dict[str, list] = {
        k: []
        for k in (
            "id",
            "task",
            "prompt",
            "completion",
            "question",
            "answers",
            "title",
            "context",
            "is_impossible",
            "article",
        )
    }
    for r in records:
        prompt, completion = build_messages(r, prompt_style, system_prompt)
        columns["id"].append(r.id)
        columns["task"].append(NAME)
        columns["prompt"].append(prompt)
        columns["completion"].append(completion)
        columns["question"].append(r.question)
        columns["answers"].append(list(r.answers))
        columns["title"].append(r.title)
        columns["context"].append(r.context)
        columns["is_impossible"].append(not r.answers)
        columns["article"].append(r.article)
    return Dataset.from_dict(columns)


def build_dataset(args: Arguments) -> DatasetDict:
    """Read the sources, split them by article and format every question as a chat example."""
    if args.prompt not in PROMPT_STYLES:
        raise ValueError(f"--prompt {args.prompt!r}: choose one of {', '.join(PROMPT_STYLES)}")
    seen: set[str] = set()
    if args.hub_dataset:
        if args.train_file or args.test_file:
            raise ValueError("give either --hub_dataset or --train_file/--test_file, not both")
        train = read_hub_split(args.hub_dataset, "train", seen, args.skip_invalid)
        test = read_hub_split(args.hub_dataset, "validation", seen, args.skip_invalid)
    elif args.train_file:
        train = read_squad(args.train_file, skip_invalid=args.skip_invalid, seen_ids=seen)
        if args.test_file and args.test_articles:
            raise ValueError("give either --test_file or --test_articles, not both")
        if args.test_file:
            test = read_squad(args.test_file, skip_invalid=args.skip_invalid, seen_ids=seen)
        elif args.test_articles:
            chosen = set(range(max(r.article for r in train) + 1)[parse_slice(args.test_articles)])
            if not chosen:
                raise ValueError(f"--test_articles {args.test_articles}: selects no article of {args.train_file}")
            test = [r for r in train if r.article in chosen]
            train = [r for r in train if r.article not in chosen]
        else:
            raise ValueError("no test questions: pass --test_file, or carve them out with --test_articles START:END")
    else:
        raise ValueError("no input: pass --train_file (official SQuAD JSON or .jsonl) or --hub_dataset")
    if not train:
        raise ValueError("no training questions are left after carving out the test articles")
    train, validation = split_by_article(train, args.validation_fraction, args.seed)
    if args.max_train_questions is not None:
        train = train[: args.max_train_questions]
    splits = {"train": train, "validation": validation, "test": test}
    for name, records in splits.items():
        answerable = sum(bool(r.answers) for r in records)
        logger.info(
            "%-10s %6d questions, %3d articles, %5.1f%% answerable",
            name,
            len(records),
            len({r.article for r in records}),
            100 * answerable / max(1, len(records)),
        )
    return DatasetDict(
        {name: to_dataset(records, args.prompt, args.system_prompt) for name, records in splits.items()}
    )


# ---------------------------------------------------------------------------------------------------- scoring


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


def _pct(mask: pd.Series) -> float:
    return 100.0 * float(mask.mean()) if len(mask) else float("nan")


def summarize(results: pd.DataFrame) -> dict[str, float]:
    """Official EM/F1 with the HasAns/NoAns split, and the original llama-squad table's columns."""
    has, no = results[results["has_answer"]], results[~results["has_answer"]]
    abstained = results[results["abstained"]]
    valid = results[results["valid_json"]]
    metrics = {
        "total": len(results),
        "valid_json": _pct(results["valid_json"]),
        "answer_found": _pct(results["answer_found"]),
        "exact": _pct(results["exact"]),
        "f1": _pct(results["f1"]),
        "exact_valid_json": _pct(valid["exact"]),  # the original's "% Exact Matches for Valid JSON"
        "correct_no_answer": _pct(no["abstained"]),  # unanswerable questions the model answered "?"
        "correct_has_answer": _pct(has["exact"]),
        "abstain_precision": _pct(~abstained["has_answer"]),
        "abstain_recall": _pct(no["abstained"]),
        "HasAns_exact": _pct(has["exact"]),
        "HasAns_f1": _pct(has["f1"]),
        "HasAns_total": len(has),
        "NoAns_exact": _pct(no["exact"]),
        "NoAns_f1": _pct(no["f1"]),
        "NoAns_total": len(no),
    }
    return metrics

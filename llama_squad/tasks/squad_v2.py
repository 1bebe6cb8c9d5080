"""SQuAD v2: read the official JSON, a Hub dataset or JSON Lines; build chat prompts; score answers officially."""

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from datasets import Dataset, DatasetDict

from llama_squad.answers import NO_ANSWER, format_json_answer, parse_json_answer
from llama_squad.files import InputError, iter_jsonl, read_json
from llama_squad.squad_eval import normalize_answer, score_prediction
from llama_squad.tasks.common import DatasetArguments, common_option_problems, json_type, percent

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
        metadata={
            "help": "Skip (count and log) invalid records instead of stopping at the first one: a bad question alone, "
            "a paragraph or article that is not an object or has no question or paragraph list whole."
        },
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


_ABSENT = object()  # a field that its record leaves out


def _json_type(value) -> str:
    """What a JSON field is, for error messages: ``missing``, ``null``, ``a string ('abc')``."""
    return "missing" if value is _ABSENT else json_type(value)


class _Invalid(Exception):
    """A bad record: the kind of problem (counted under ``--skip_invalid``) and how to fix it."""

    def __init__(self, kind: str, fix: str):
        super().__init__(kind)
        self.kind, self.fix = kind, fix


def _answer_items(answers, hub_layout: bool) -> list:
    """The answers of a question as a list; ``hub_layout`` also reads {"text": [...], "answer_start": [...]}."""
    if isinstance(answers, list):
        return answers
    if hub_layout and isinstance(answers, dict):
        texts, starts = answers.get("text", _ABSENT), answers.get("answer_start", _ABSENT)
        if not isinstance(texts, list) or not isinstance(starts, list):
            raise _Invalid(
                "bad answers layout",
                f"'answers' is an object whose 'text' is {_json_type(texts)} and 'answer_start' is "
                f"{_json_type(starts)}: both must be lists, one answer_start per text",
            )
        if len(texts) != len(starts):
            raise _Invalid(
                "bad answers layout",
                f"'answers' has {len(texts)} texts but {len(starts)} answer_start values: give one answer_start "
                "per text",
            )
        return [{"text": t, "answer_start": a} for t, a in zip(texts, starts, strict=True)]
    layouts = 'a list of {"text": ..., "answer_start": ...} objects'
    if hub_layout:
        layouts += ', or {"text": [...], "answer_start": [...]}'
    raise _Invalid("answers not a list", f"'answers' is {_json_type(answers)}: give {layouts}")


def _check_question(qid, context, question, answers, is_impossible, hub_layout: bool) -> tuple[str, ...]:
    """The gold answer texts of a question whose fields are valid; raises :class:`_Invalid` otherwise.

    ``answers`` or ``is_impossible`` is ``_ABSENT`` when the record leaves it out: an unanswerable question may leave
    out ``answers`` only with ``is_impossible: true``; without ``is_impossible``, ``answers: []`` means unanswerable.
    """
    if qid is _ABSENT or qid is None or (isinstance(qid, str) and not qid.strip()):
        raise _Invalid("no id", "every question needs a unique, non-empty 'id'")
    if not isinstance(qid, str):
        raise _Invalid("id not a string", f"'id' is {_json_type(qid)}: write it as a JSON string")
    if not isinstance(context, str):
        if context is _ABSENT or context is None:
            raise _Invalid("empty context", "a question needs a non-empty 'context' to answer from")
        raise _Invalid("context not a string", f"'context' is {_json_type(context)}: it must be the passage text")
    if not context.strip():
        raise _Invalid("empty context", "a question needs a non-empty 'context' to answer from")
    if not isinstance(question, str):
        if question is _ABSENT or question is None:
            raise _Invalid("empty question", "the 'question' field must be a non-empty string")
        raise _Invalid("question not a string", f"'question' is {_json_type(question)}: write it as a JSON string")
    if not question.strip():
        raise _Invalid("empty question", "the 'question' field must be a non-empty string")
    if is_impossible is not _ABSENT and not isinstance(is_impossible, bool):
        raise _Invalid(
            "is_impossible not a boolean",
            f"'is_impossible' is {_json_type(is_impossible)}: write true or false (JSON booleans, not strings)",
        )
    if answers is _ABSENT:
        if is_impossible is True:
            return ()
        raise _Invalid(
            "no answers",
            "the question has no 'answers': give its answers, or 'answers': [] with 'is_impossible': true "
            "for an unanswerable question",
        )
    items = _answer_items(answers, hub_layout)
    if is_impossible is True and items:
        raise _Invalid("is_impossible with answers", "an unanswerable question must have 'answers': []")
    if is_impossible is False and not items:
        raise _Invalid(
            "is_impossible false without answers",
            "an answerable question needs its answers: give them, or set 'is_impossible': true",
        )
    texts = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise _Invalid(
                "answer not an object",
                f'answer {n} is {_json_type(item)}: each answer is {{"text": ..., "answer_start": ...}}',
            )
        text, start = item.get("text", _ABSENT), item.get("answer_start", _ABSENT)
        if not isinstance(text, str) or not text:
            raise _Invalid("answer without text", f"answer {n}: 'text' is {_json_type(text)}; it must be non-empty")
        if start is _ABSENT:
            raise _Invalid(
                "answer_start missing",
                f"answer {n} ({text!r}) has no 'answer_start': give the character offset of the answer in the context",
            )
        if not isinstance(start, int) or isinstance(start, bool):
            raise _Invalid(
                "answer_start not an integer",
                f"answer {n} ({text!r}): 'answer_start' is {_json_type(start)}; give the character offset of the "
                "answer in the context as a JSON integer",
            )
        if not 0 <= start < len(context):
            raise _Invalid(
                "answer_start out of range",
                f"answer {n} ({text!r}): answer_start {start} is outside the context (0 to {len(context) - 1})",
            )
        if context[start : start + len(text)] != text:
            found = context[start : start + len(text)]
            raise _Invalid(
                "answer_start mismatch", f"answer_start {start} points at {found!r}, not at the answer {text!r}"
            )
        texts.append(text)
    return tuple(texts)


class _Validator:
    """Checks records one by one; raises on the first bad one, or counts and skips it with ``skip_invalid``."""

    def __init__(self, source: str, skip_invalid: bool, seen_ids: set[str]):
        self.source = source
        self.skip_invalid = skip_invalid
        self.seen_ids = seen_ids
        self.skipped: dict[str, int] = {}

    def reject(self, where: str, problem: _Invalid, unit: str = "question") -> None:
        """Raise the error of a bad ``unit`` (question, paragraph, article), or count it when skipping."""
        if not self.skip_invalid:
            raise InputError(
                f"{self.source}: {where}: {problem.kind}: {problem.fix}. "
                f"Fix the {unit}, or pass --skip_invalid to skip such {unit}s."
            )
        self.skipped[problem.kind] = self.skipped.get(problem.kind, 0) + 1

    def check(self, where: str, qid, context, question, answers, is_impossible, hub_layout=False):
        """The gold answer texts of a valid question (its id is then taken), or None when it is skipped."""
        try:
            texts = _check_question(qid, context, question, answers, is_impossible, hub_layout)
            if qid in self.seen_ids:
                raise _Invalid(
                    "duplicate id", f"the id {qid!r} appears twice: ids must be unique across all input files"
                )
        except _Invalid as problem:
            self.reject(where, problem)
            return None
        self.seen_ids.add(qid)
        return texts

    def log(self) -> None:
        if self.skipped:
            total = sum(self.skipped.values())
            details = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items()))
            logger.warning("%s: skipped %d invalid records (%s)", self.source, total, details)


def _read_official(path: Path, validator: _Validator) -> list[Record]:
    """Records of an official SQuAD JSON file. A bad question is skipped alone under ``--skip_invalid``; a
    paragraph that is not an object or has no ``qas`` list is skipped whole, and so is an article that is not an
    object, has no ``paragraphs`` list or a title that is not a string: each counts as one skipped record."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise InputError(
            f"{path}: not a SQuAD JSON file (expected an object with a 'data' list of articles); "
            "for one question per line, name the file *.jsonl"
        )
    records = []
    for a, article in enumerate(data["data"]):
        if not isinstance(article, dict):
            fix = f'it is {_json_type(article)}; each article is {{"title": ..., "paragraphs": [...]}}'
            validator.reject(f"article {a}", _Invalid("article not an object", fix), "article")
            continue
        title = article.get("title", f"article {a}")
        if not isinstance(title, str):
            fix = f"'title' is {_json_type(title)}: write it as a JSON string"
            validator.reject(f"article {a}", _Invalid("title not a string", fix), "article")
            continue
        paragraphs = article.get("paragraphs", _ABSENT)
        if not isinstance(paragraphs, list):
            fix = f'\'paragraphs\' is {_json_type(paragraphs)}: give a list of {{"context": ..., "qas": [...]}}'
            validator.reject(f"article {a} ({title!r})", _Invalid("article without a paragraphs list", fix), "article")
            continue
        for p, paragraph in enumerate(paragraphs):
            where = f"article {a} ({title!r}), paragraph {p}"
            if not isinstance(paragraph, dict):
                fix = f'it is {_json_type(paragraph)}; each paragraph is {{"context": ..., "qas": [...]}}'
                validator.reject(where, _Invalid("paragraph not an object", fix), "paragraph")
                continue
            qas = paragraph.get("qas", _ABSENT)
            if not isinstance(qas, list):
                fix = f'\'qas\' is {_json_type(qas)}: give a list of questions, {{"id", "question", "answers"}}'
                validator.reject(where, _Invalid("paragraph without a qas list", fix), "paragraph")
                continue
            context = paragraph.get("context", _ABSENT)
            for q, qa in enumerate(qas):
                if not isinstance(qa, dict):
                    fix = f'it is {_json_type(qa)}; each question is {{"id": ..., "question": ..., "answers": [...]}}'
                    validator.reject(f"{where}, question {q}", _Invalid("question not an object", fix), "question")
                    continue
                qid = qa.get("id", _ABSENT)
                question, answers = qa.get("question", _ABSENT), qa.get("answers", _ABSENT)
                texts = validator.check(
                    f"{where}, question {q} (id {qa.get('id')!r})", qid, context, question, answers,
                    qa.get("is_impossible", _ABSENT),
                )  # fmt: skip
                if texts is not None:
                    records.append(Record(qid, title, context, question.strip(), texts, a))
    return records


def _read_rows(rows, source: str, validator: _Validator) -> list[Record]:
    """Records of flat rows (JSON Lines, a Hub split): each bad row is skipped alone under ``--skip_invalid``."""
    records, articles = [], {}
    for where, row in rows:
        qid, title, where = row.get("id", _ABSENT), row.get("title", ""), f"{where} (id {row.get('id')!r})"
        if not isinstance(title, str):
            fix = f"'title' is {_json_type(title)}: write it as a JSON string"
            validator.reject(where, _Invalid("title not a string", fix))
            continue
        context, question = row.get("context", _ABSENT), row.get("question", _ABSENT)
        answers, is_impossible = row.get("answers", _ABSENT), row.get("is_impossible", _ABSENT)
        texts = validator.check(where, qid, context, question, answers, is_impossible, True)
        if texts is None:
            continue
        article = articles.setdefault(title, len(articles))
        records.append(Record(qid, title, context, question.strip(), texts, article))
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

    try:
        rows = load_dataset(hub_dataset, split=split)
    except (OSError, ValueError) as e:  # not on the Hub, offline and not cached, no such split
        raise InputError(
            f"--hub_dataset {hub_dataset}: cannot load its {split!r} split ({e}); check the dataset id, the network "
            "(HF_HUB_OFFLINE), or pass --train_file/--test_file"
        ) from None
    validator = _Validator(f"{hub_dataset}[{split}]", skip_invalid, validator_state)
    records = _read_rows(((f"row {i}", row) for i, row in enumerate(rows)), hub_dataset, validator)
    validator.log()
    return records


# ---------------------------------------------------------------------------------------------------- splitting


def check_arguments(args: Arguments) -> None:
    """Raise one ValueError naming every bad option (type, range, combination), before any file is read."""
    problems = common_option_problems(args)
    if args.prompt not in PROMPT_STYLES:
        problems.append(f"--prompt {args.prompt!r}: choose one of {', '.join(PROMPT_STYLES)}")
    if args.max_train_questions is not None and args.max_train_questions < 1:
        problems.append(
            f"--max_train_questions {args.max_train_questions}: give a positive number, or leave it out for all"
        )
    if args.test_articles is not None:
        try:
            chosen = parse_slice(args.test_articles)
        except ValueError as e:
            problems.append(str(e))
        else:
            start, stop = chosen.start, chosen.stop
            if start is not None and stop is not None and (start < 0) == (stop < 0) and start >= stop:
                problems.append(f"--test_articles {args.test_articles}: selects no article (START must be below END)")
    if args.hub_dataset:
        if args.train_file or args.test_file:
            problems.append("give either --hub_dataset or --train_file/--test_file, not both")
        if args.test_articles is not None:
            problems.append(
                "--test_articles carves the test split out of --train_file; --hub_dataset tests on its "
                "validation split: leave --test_articles out"
            )
    elif args.train_file:
        if args.test_file and args.test_articles is not None:
            problems.append("give either --test_file or --test_articles, not both")
        elif not args.test_file and args.test_articles is None:
            problems.append("no test questions: pass --test_file, or carve them out with --test_articles START:END")
    elif args.test_file or args.test_articles is not None:
        problems.append("no training questions: pass --train_file (official SQuAD JSON or .jsonl)")
    else:
        problems.append("no input: pass --train_file (official SQuAD JSON or .jsonl) or --hub_dataset")
    if problems:
        raise ValueError("; ".join(problems))


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
    """Check the options, read the sources, split them by article and format every question as a chat example."""
    check_arguments(args)
    seen: set[str] = set()
    if args.hub_dataset:
        train = read_hub_split(args.hub_dataset, "train", seen, args.skip_invalid)
        test = read_hub_split(args.hub_dataset, "validation", seen, args.skip_invalid)
    else:  # --train_file, with --test_file or --test_articles (check_arguments made sure)
        train = read_squad(args.train_file, skip_invalid=args.skip_invalid, seen_ids=seen)
        if args.test_file:
            test = read_squad(args.test_file, skip_invalid=args.skip_invalid, seen_ids=seen)
        else:
            chosen = set(range(max(r.article for r in train) + 1)[parse_slice(args.test_articles)])
            test = [r for r in train if r.article in chosen]
            train = [r for r in train if r.article not in chosen]
            if not test:
                raise ValueError(
                    f"--test_articles {args.test_articles}: selects no article with valid questions of "
                    f"{args.train_file} (articles are numbered from 0 in file order)"
                )
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


# ---------------------------------------------------------------------------------------------------- decoding


def constraint_of(example: dict, mode: str):
    """What ``--constrain mode`` lets the model answer (a :class:`llama_squad.constrain.AnswerSpec`; None: anything):
    ``{"answer": ...}`` with any string (json), or with a span of the context or "?" (extractive)."""
    from llama_squad.constrain import AnswerSpec, Field, json_spec

    if mode == "none":
        return None
    if mode == "json":
        return json_spec(["answer"])
    return AnswerSpec((Field("answer", source=example["context"], choices=(NO_ANSWER,)),))


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

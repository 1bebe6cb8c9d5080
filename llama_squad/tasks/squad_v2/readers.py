"""Reading SQuAD v2 questions: the official JSON, JSON Lines or a Hub dataset, each record checked."""

import logging
from dataclasses import dataclass
from pathlib import Path

from llama_squad.files import InputError, iter_jsonl, read_json
from llama_squad.tasks.common import json_type

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One SQuAD question, validated."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]  # every gold answer text, in file order; () for unanswerable
    article: int  # index of the article (title) in its source, in order of first appearance


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
    from huggingface_hub.constants import HF_HUB_OFFLINE

    from llama_squad.models import hub_unreachable

    unreachable = None if HF_HUB_OFFLINE else hub_unreachable()
    if unreachable:
        raise InputError(
            f"--hub_dataset {hub_dataset}: the Hub cannot be reached ({unreachable}): pass the official JSON files "
            "(--train_file/--test_file), or download the dataset where there is a network and run with "
            "HF_HUB_OFFLINE=1"
        )
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

"""The results schema: one scored row per question, written incrementally and read back for summaries."""

import csv
import io
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from llama_squad.io import InputError, atomic_path

logger = logging.getLogger(__name__)

# Every results row, whatever the task. A task adds its own columns (``EXTRA_RESULT_COLUMNS`` of its module).
RESULT_COLUMNS = (
    "example_id",  # the dataset row that was asked (resume skips finished ones)
    "id",  # this results row (== example_id, unless one generation answers several questions)
    "task",  # squad_v2 | multiwoz: which task's summary applies
    "question",
    "answers",  # gold answers, a JSON list ([] = no answer)
    "raw_output",  # the model's generated text, as generated
    "parsed_answer",  # the answer recovered from raw_output ("" when none could be)
    "valid_json",  # raw_output was exactly one well-formed JSON answer
    "answer_found",  # an answer could be recovered at all (leniently)
    "exact",  # exact match, 0 or 1 (SQuAD: official normalization, max over gold answers)
    "f1",  # token F1 in [0, 1]
    "has_answer",  # the question has a gold answer
    "abstained",  # the model answered "?"
    "prompt_tokens",
    "completion_tokens",
)
BOOL_COLUMNS = ("valid_json", "answer_found", "has_answer", "abstained")
FLOAT_COLUMNS = ("exact", "f1")
INT_COLUMNS = ("prompt_tokens", "completion_tokens")


def result_columns(task_module) -> list[str]:
    """The CSV header of a task's results: the common columns, then the task's own."""
    return list(RESULT_COLUMNS) + [c for c in task_module.EXTRA_RESULT_COLUMNS if c not in RESULT_COLUMNS]


def _to_csv_text(rows: Iterable[dict], columns: list[str], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="raise", lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({c: json.dumps(row[c], ensure_ascii=False) if c == "answers" else row[c] for c in columns})
    return buffer.getvalue()


class ResultsWriter:
    """Appends results rows to a CSV file, one durable batch at a time, and resumes an interrupted file.

    On opening an existing file, complete rows are kept and a row cut short by a crash is dropped (the file is
    rewritten atomically without it); :attr:`done` holds the example ids already answered, which the caller skips.
    """

    def __init__(self, path: str | os.PathLike, columns: list[str]):
        self.path = Path(path)
        self.columns = columns
        self.done: set[str] = set()
        self.rows_written = 0
        if self.path.exists() and self.path.stat().st_size > 0:
            self._recover()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write(_to_csv_text([], columns, header=True), mode="w")

    def _recover(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        consumed = 0

        def line_source():
            nonlocal consumed
            for line in lines:
                consumed += 1
                yield line

        reader = csv.reader(line_source(), strict=True)
        rows: list[list[str]] = []  # complete rows: the right number of fields, ended by a line break
        good_lines = 0
        header = next(reader, None)
        if header != self.columns:
            raise InputError(
                f"{self.path}: its columns {header} are not this run's {self.columns}; "
                "it was written by another task or version: choose another output file or delete it"
            )
        good_lines = consumed
        try:
            for row in reader:
                if len(row) != len(self.columns) or not lines[consumed - 1].endswith("\n"):
                    break
                rows.append(row)
                good_lines = consumed
        except csv.Error:  # a quoted field cut short by a crash
            pass
        tail = "".join(lines[good_lines:])
        if tail:
            # rows of one example are written together: if the cut row belongs to the last kept example, its
            # earlier rows are incomplete too
            cut_id = next(csv.reader([tail.split("\n", 1)[0]]), [""])[0] if tail.strip() else ""
            while rows and rows[-1][0] == cut_id:
                rows.pop()
            logger.warning("%s: dropping the incomplete end of an interrupted run", self.path)
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(self.columns)
            writer.writerows(rows)
            with atomic_path(self.path) as tmp:
                tmp.write_text(buffer.getvalue(), encoding="utf-8")
        self.done = {r[0] for r in rows}
        self.rows_written = len(rows)
        if self.done:
            logger.info("%s: resuming after %d answered questions", self.path, len(self.done))

    def _write(self, text: str, mode: str = "a") -> None:
        # one os.write per batch: a killed process leaves a batch whole or absent, never half a row
        data = text.encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC), 0o644)
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, rows: list[dict]) -> None:
        """Append ``rows`` (dicts with every column) durably, in one write."""
        if not rows:
            return
        self._write(_to_csv_text(rows, self.columns, header=False))
        self.done.update(str(r["example_id"]) for r in rows)
        self.rows_written += len(rows)


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Load a results CSV, checking it has every column of :data:`RESULT_COLUMNS`, with typed columns."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.exists():
        raise InputError(f"{path}: no such results file (test.py writes OUTPUT_DIR/results.csv)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable CSV file ({e})") from None
    missing = [c for c in RESULT_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(
            f"{path}: missing result columns {missing} (it has {list(df.columns)}); "
            "results files are written by test.py: re-run it, or add the columns"
        )
    for column in BOOL_COLUMNS:
        bad = ~df[column].isin(["True", "False"])
        if bad.any():
            row = int(bad.idxmax())
            raise InputError(f"{path}: column {column!r} must be True/False; line {row + 2} has {df[column][row]!r}")
        df[column] = df[column] == "True"
    for column in FLOAT_COLUMNS + INT_COLUMNS:
        values = pd.to_numeric(df[column], errors="coerce")
        if values.isna().any():
            row = int(values.isna().idxmax())
            raise InputError(f"{path}: column {column!r} must be numeric; line {row + 2} has {df[column][row]!r}")
        df[column] = values
    df["answers"] = [json.loads(a) for a in df["answers"]]
    return df


def summarize(results: pd.DataFrame) -> dict[str, float]:
    """The flat metrics of one run: its task's summary (a run holds one task)."""
    from llama_squad.tasks import get_task

    tasks = results["task"].unique().tolist()
    if len(tasks) != 1:
        raise InputError(f"a results file must hold one task, this one holds {tasks}")
    return get_task(tasks[0]).summarize(results)

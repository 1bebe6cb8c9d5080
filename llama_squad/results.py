"""The results schema: one scored row per question, written incrementally and read back for summaries."""

import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from llama_squad.files import InputError, atomic_path, atomic_write_json, read_json

logger = logging.getLogger(__name__)

# Every results row, whatever the task. A task adds its own columns (its ``extra_result_columns``).
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
    "constrain",  # --constrain: none | json | extractive
    "no_answer_prob",  # where the answer's value begins, the model's probability of abstaining ("": not reached)
    "best_answer",  # where the answer abstained (--best_answers): the best answer that does not
)
# Columns added after the first results files were written: such a file reads with this value in the column.
LATER_COLUMNS = {"constrain": "none"}
# Columns a file written before them lacks, read as absent: the figures made of them (calibrated scores) are then
# absent too, never zero.
OPTIONAL_COLUMNS = ("no_answer_prob", "best_answer")
ROW_DEFAULTS = {**LATER_COLUMNS, **dict.fromkeys(OPTIONAL_COLUMNS, "")}  # what a row made without them writes
BOOL_COLUMNS = ("valid_json", "answer_found", "has_answer", "abstained")
FLOAT_COLUMNS = ("exact", "f1")
INT_COLUMNS = ("prompt_tokens", "completion_tokens")


def result_columns(task) -> list[str]:
    """The CSV header of a task's results: the common columns, then the task's own."""
    return list(RESULT_COLUMNS) + [c for c in task.extra_result_columns if c not in RESULT_COLUMNS]


def csv_text(rows: Iterable[list]) -> str:
    """CSV text of ``rows``, each ended by "\\n", every field holding "\\n" or "\\r" quoted.

    The csv module of Python 3.11 quotes only the characters of its line terminator (later ones quote "\\r" too):
    with "\\n", a bare "\\r" in a model's output would be written unquoted and end the row for every reader. Such a
    row is written with all its fields quoted (the module chooses quoting per row, not per field); it reads the same.
    """
    buffer = io.StringIO()
    minimal = csv.writer(buffer, lineterminator="\n")
    quote_all = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    for row in rows:
        (quote_all if any("\r" in str(value) for value in row) else minimal).writerow(row)
    return buffer.getvalue()


def _to_csv_text(rows: Iterable[dict], columns: list[str], header: bool) -> str:
    def fields(row: dict) -> list:
        row = {**ROW_DEFAULTS, **row}  # rows made by older code lack the later columns
        unknown = [c for c in row if c not in columns]
        if unknown:
            raise ValueError(f"results row {row.get('id')!r} has fields {unknown} that are not columns {columns}")
        return [json.dumps(row[c], ensure_ascii=False) if c == "answers" else row[c] for c in columns]

    return csv_text(([columns] if header else []) + [fields(row) for row in rows])


def csv_lines(text: str) -> list[str]:
    """The lines of CSV text, each with its "\\n": split at "\\n" only, the one line break the CSV writer ends a row
    with or quotes (``str.splitlines`` also breaks at "\\r", "\\x0b", "\\x0c", "\\x1c"-"\\x1e", "\\x85", "\\u2028" and
    "\\u2029", which may stand unquoted inside a field)."""
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def read_complete_rows(path: str | os.PathLike, columns: list[str]) -> tuple[list[list[str]], bool]:
    """The complete rows of a results file that a crash may have cut short, and whether its end must be dropped.

    A row counts when it has every field and its line break; a row cut by a crash (or a character cut in two) is
    not, and neither are the earlier rows of its example (an example's rows are written together). Read-only.
    """
    rows, cut = read_numbered_rows(path, columns)
    return [row for _, row in rows], cut


def read_numbered_rows(path: str | os.PathLike, columns: list[str]) -> tuple[list[tuple[int, list[str]]], bool]:
    """:func:`read_complete_rows` with the line each row starts on (the header is line 1)."""
    path = Path(path)
    data = path.read_bytes()
    cut_bytes = False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if b"\n" in data[e.start :]:  # a crash can only cut the last line: bad bytes earlier are corruption
            line = data[: e.start].count(b"\n") + 1
            raise InputError(
                f"{path}: line {line} is not UTF-8 ({e.reason} at byte {e.start}); the file was changed outside "
                "test.py: restore it, or delete it (with run.json) to start again"
            ) from None
        text = data[: e.start].decode("utf-8")  # a character cut in two by a crash: its line is dropped below
        cut_bytes = True
    lines = csv_lines(text)
    consumed = 0

    def line_source():
        nonlocal consumed
        for line in lines:
            consumed += 1
            yield line

    reader = csv.reader(line_source(), strict=True)
    rows: list[tuple[int, list[str]]] = []
    try:
        header = next(reader, None)
    except csv.Error:
        header = None
    if header != columns:
        raise InputError(
            f"{path}: its columns {header} are not this run's {columns}; it was written by another task or "
            "version: choose another --output_dir, or delete the file"
        )
    good_lines = consumed
    try:
        for row in reader:
            if len(row) != len(columns) or not lines[consumed - 1].endswith("\n"):
                break
            rows.append((good_lines + 1, row))
            good_lines = consumed
    except csv.Error:  # a quoted field cut short by a crash
        pass
    tail = "".join(lines[good_lines:])
    if tail.strip():
        try:
            cut_id = next(csv.reader([tail.split("\n", 1)[0]]), [""])[0]
        except csv.Error:  # a bare "\r" (written unquoted by earlier code): the id is still its first field
            cut_id = tail.split(",", 1)[0]
        while rows and rows[-1][1][0] == cut_id:
            rows.pop()
    return rows, bool(tail) or cut_bytes


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
        rows, cut = read_complete_rows(self.path, self.columns)
        if cut:
            logger.warning("%s: dropping the incomplete end of an interrupted run", self.path)
            with atomic_path(self.path) as tmp:
                tmp.write_text(csv_text([self.columns, *rows]), encoding="utf-8", newline="")
        self.done = {r[0] for r in rows}
        self.rows_written = len(rows)
        if self.done:
            logger.info("%s: resuming after %d answered questions", self.path, len(self.done))

    def _write(self, text: str, mode: str = "a") -> None:
        # one os.write per batch: a killed process leaves a batch whole or absent, never half a row
        # (a full disk may cut a batch: the next run drops the cut row, as after a crash)
        data = text.encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC), 0o644)
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except OSError as e:
            e.filename = e.filename or str(self.path)
            raise
        finally:
            os.close(fd)

    def write(self, rows: list[dict]) -> None:
        """Append ``rows`` (dicts with every column) durably, in one write."""
        if not rows:
            return
        self._write(_to_csv_text(rows, self.columns, header=False))
        self.done.update(str(r["example_id"]) for r in rows)
        self.rows_written += len(rows)


RUN_RECORD = "run.json"  # beside results.csv: the settings that define its rows, and how many examples it asks


def flatten(settings: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: settings compared key by key."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_run_record(folder: str | os.PathLike) -> dict | None:
    """The run record of a results folder (``run.json``), or None if it has none."""
    path = Path(folder) / RUN_RECORD
    if not path.exists():
        return None
    record = read_json(path)
    fix = "delete it with results.csv (or pass --overwrite) to start again"
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise InputError(f"{path}: not a run record written by test.py (no 'settings'); {fix}")
    examples = record.get("examples")
    if examples is not None and (not isinstance(examples, int) or isinstance(examples, bool) or examples < 0):
        raise InputError(f"{path}: 'examples' is {examples!r}, not a count of questions; {fix}")
    return record


def check_resume(folder: str | os.PathLike, settings: dict, examples: int, overwrite: bool) -> dict | None:
    """Refuse to add rows to a results file made with other settings; returns its run record (None if none).

    The settings must be equal key by key; the new run may ask more examples than the old one (a larger
    ``--limit``: the first rows are the same questions), never fewer. ``overwrite`` discards old results instead.
    """
    folder = Path(folder)
    csv_path = folder / "results.csv"
    if overwrite or not csv_path.exists():
        return None
    record = read_run_record(folder)
    fix = "pass --overwrite to discard them and start again, or choose another --output_dir"
    if record is None:
        raise InputError(
            f"{csv_path}: results without a run record ({RUN_RECORD}), so their settings are unknown "
            f"and this run cannot add to them: {fix}"
        )
    old, new = flatten(record["settings"]), flatten(settings)
    differences = [
        f"{key}: {old.get(key, '(unset)')!r} in {RUN_RECORD}, {new.get(key, '(unset)')!r} now"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    if differences:
        raise InputError(
            f"{csv_path} holds results of other settings; adding rows would mix two runs. What differs:\n  - "
            + "\n  - ".join(differences)
            + f"\nRun with the same settings to resume, or {fix}."
        )
    if record.get("examples", 0) > examples:
        raise InputError(
            f"{csv_path} is for {record['examples']} questions (--limit {record.get('limit')}), this run asks "
            f"{examples}: a smaller --limit cannot resume it; pass --limit {record.get('limit')} (or none), or {fix}"
        )
    return record


def start_run(folder: str | os.PathLike, settings: dict, examples: int, info: dict, overwrite: bool) -> None:
    """Before the first row: discard old results if asked, write the run record, remove a metrics.json that would
    no longer describe the rows (test.py writes it again once every question is answered)."""
    folder = Path(folder)
    names = ("results.csv", "metrics.json", RUN_RECORD) if overwrite else ("metrics.json",)
    for name in names:
        (folder / name).unlink(missing_ok=True)
    if overwrite:
        shutil.rmtree(folder / SHARDS, ignore_errors=True)
    atomic_write_json(folder / RUN_RECORD, {"settings": settings, "examples": examples, **info})


def update_run_record(folder: str | os.PathLike, **entries) -> None:
    """Add ``entries`` to a results folder's run record (``run.json``), atomically."""
    record = read_run_record(folder) or {}
    atomic_write_json(Path(folder) / RUN_RECORD, {**record, **entries})


SHARDS = "shards"  # a distributed run's per-process results files, merged into results.csv at its end


def shard_path(folder: str | os.PathLike, rank: int) -> Path:
    """The results file that process ``rank`` of a distributed run appends to."""
    return Path(folder) / SHARDS / f"results-rank{rank:03d}.csv"


def run_files(folder: str | os.PathLike) -> list[Path]:
    """The files that hold a run's rows: results.csv and the shards of distributed attempts, if any."""
    folder = Path(folder)
    files = [folder / "results.csv"] if (folder / "results.csv").exists() else []
    return files + sorted((folder / SHARDS).glob("results-rank*.csv"))


def check_asked(path: Path, rows: list[tuple[int, list[str]]], example_ids: set[str]) -> None:
    """Refuse the rows (from :func:`read_numbered_rows`) of any example but ``example_ids``, the questions this run
    asks: they would be counted in its metrics."""
    foreign = [(line, row[0]) for line, row in rows if row[0] not in example_ids]
    if foreign:
        line, example_id = foreign[0]
        others = f" (and {len(foreign) - 1} more rows)" if len(foreign) > 1 else ""
        raise InputError(
            f"{path}: line {line} is a row of example_id {example_id!r}{others}, which is not one of the "
            f"{len(example_ids)} questions this run asks: the file was changed outside test.py; delete that row, or "
            "pass --overwrite to start again"
        )


def answered_ids(folder: str | os.PathLike, columns: list[str], example_ids: Iterable[str]) -> set[str]:
    """The example ids with complete rows in any of the run's files (read-only: a torn end is ignored). A row of an
    example that is not in ``example_ids`` (the questions this run asks) raises :class:`InputError`."""
    asked = set(example_ids)
    done = set()
    for path in run_files(folder):
        if path.stat().st_size:
            rows, _ = read_numbered_rows(path, columns)
            check_asked(path, rows, asked)
            done.update(row[0] for _, row in rows)
    return done


def merge_shards(folder: str | os.PathLike, columns: list[str], example_ids: list[str]) -> Path:
    """Merge results.csv and the shards into one results.csv, in the order of ``example_ids``; then drop the shards.

    Every example must have its rows: a shard that is missing or unfinished is an error naming what is absent,
    never a smaller table, and a row of any other example is an error naming it. An example answered twice (a crash
    between two merges) keeps its first rows.
    """
    folder = Path(folder)
    asked = set(example_ids)
    by_example: dict[str, list[list[str]]] = {}
    for path in run_files(folder):
        if not path.stat().st_size:
            continue
        rows, _ = read_numbered_rows(path, columns)
        check_asked(path, rows, asked)
        seen_here: dict[str, list[list[str]]] = {}
        for _, row in rows:
            seen_here.setdefault(row[0], []).append(row)
        for example_id, example_rows in seen_here.items():
            by_example.setdefault(example_id, example_rows)
    missing = [i for i in example_ids if i not in by_example]
    if missing:
        shards = [p.name for p in run_files(folder)]
        raise InputError(
            f"{folder}: {len(missing)} of {len(example_ids)} questions have no row in {shards or 'any results file'} "
            f"(first: {missing[:3]}): a process's shard is missing or unfinished; re-run the same command to answer "
            "them"
        )
    text = csv_text([columns] + [row for example_id in example_ids for row in by_example[example_id]])
    with atomic_path(folder / "results.csv") as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    shutil.rmtree(folder / SHARDS, ignore_errors=True)
    return folder / "results.csv"


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
    for column, value in LATER_COLUMNS.items():
        if column not in df.columns:
            df[column] = value
    missing = [c for c in RESULT_COLUMNS if c not in df.columns and c not in OPTIONAL_COLUMNS]
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
    if "no_answer_prob" in df.columns:  # empty where the answer's value was never reached: NaN
        probs = pd.to_numeric(df["no_answer_prob"], errors="coerce")
        bad = (probs.isna() & (df["no_answer_prob"] != "")) | (probs < 0) | (probs > 1)
        if bad.any():
            row = int(bad.idxmax())
            raise InputError(
                f"{path}: column 'no_answer_prob' must be a probability in [0, 1] or empty; line {row + 2} has "
                f"{df['no_answer_prob'][row]!r}: fix that line, or re-run test.py"
            )
        df["no_answer_prob"] = probs
    answers = []
    for row, text in enumerate(df["answers"]):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise InputError(
                f"{path}: column 'answers' must hold a JSON list of strings ([] for no answer); line {row + 2} has "
                f"{text!r}: fix that line, or re-run test.py"
            )
        answers.append(value)
    df["answers"] = answers
    duplicated = df["id"].duplicated()
    if duplicated.any():
        logger.warning(
            "%s: %d rows repeat an earlier row's id (first: %r, line %d); counting each id once (the first row)",
            path,
            int(duplicated.sum()),
            df["id"][duplicated.idxmax()],
            int(duplicated.idxmax()) + 2,
        )
        df = df[~duplicated].reset_index(drop=True)
    return df


def summarize(results: pd.DataFrame) -> dict[str, float]:
    """The flat metrics of one run: its task's summary (a run holds one task)."""
    from llama_squad.tasks import get_task

    tasks = results["task"].unique().tolist()
    if len(tasks) != 1:
        raise InputError(f"a results file must hold one task, this one holds {tasks}")
    return get_task(tasks[0]).summarize(results)

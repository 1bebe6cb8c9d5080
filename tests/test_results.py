"""Results rows: the schema, durable appends and resume, reading back, and the summary table across runs."""

import csv
import json
import logging

import pytest

import summarize_results
from llama_squad.files import InputError
from llama_squad.results import (
    RESULT_COLUMNS,
    ROW_DEFAULTS,
    SHARDS,
    ResultsWriter,
    answered_ids,
    merge_shards,
    read_complete_rows,
    read_results,
    result_columns,
    shard_path,
)
from llama_squad.summary import summarize_files
from llama_squad.tasks import squad_v2

COLUMNS = result_columns(squad_v2.TASK)


def row(i, has_answer, valid, found, exact, f1, abstained, raw="{}"):
    return {
        "example_id": f"q{i}",
        "id": f"q{i}",
        "task": "squad_v2",
        "question": f"question {i}?",
        "answers": ["gold, with comma", 'a "quote"'] if has_answer else [],
        "raw_output": raw,
        "parsed_answer": "x" if found else "",
        "valid_json": valid,
        "answer_found": found,
        "exact": exact,
        "f1": f1,
        "has_answer": has_answer,
        "abstained": abstained,
        "prompt_tokens": 100 + i,
        "completion_tokens": 7,
        "title": "T",
    }


ROWS = [
    row(1, True, True, True, 1.0, 1.0, False),
    row(2, True, True, True, 0.0, 0.5, False, raw='{"answer": "multi\nline, text"}'),
    row(3, True, False, True, 0.0, 0.0, True),
    row(4, False, True, True, 1.0, 1.0, True),
    row(5, False, False, False, 1.0, 1.0, False, raw=""),
    row(6, False, True, True, 0.0, 0.0, False),
]


def write(path, rows):
    writer = ResultsWriter(path, COLUMNS)
    writer.write(rows)
    return writer


def test_columns_are_the_schema_then_the_task_extras():
    assert COLUMNS == list(RESULT_COLUMNS) + ["title"]


def test_round_trip_types_and_values(tmp_path):
    write(tmp_path / "results.csv", ROWS)
    df = read_results(tmp_path)  # a folder means its results.csv
    assert list(df.columns) == COLUMNS and len(df) == 6
    assert df["answers"][0] == ["gold, with comma", 'a "quote"'] and df["answers"][3] == []
    assert df["raw_output"][1] == '{"answer": "multi\nline, text"}' and df["raw_output"][4] == ""
    assert df["valid_json"].tolist() == [True, True, False, True, False, True]
    assert df["prompt_tokens"].tolist() == [101, 102, 103, 104, 105, 106]


def test_summary_values_by_hand(tmp_path):
    write(tmp_path / "run" / "results.csv", ROWS)
    table = summarize_files([str(tmp_path / "run" / "results.csv")])
    m = table.loc["run"]
    expected = {
        "total": 6,
        "valid_json": 400 / 6,
        "answer_found": 500 / 6,
        "exact": 50.0,
        "f1": 350 / 6,
        "exact_valid_json": 50.0,
        "correct_no_answer": 100 / 3,
        "correct_has_answer": 100 / 3,
        "abstain_precision": 50.0,
        "abstain_recall": 100 / 3,
        "HasAns_exact": 100 / 3,
        "HasAns_f1": 50.0,
        "HasAns_total": 3,
        "NoAns_exact": 200 / 3,
        "NoAns_f1": 200 / 3,
        "NoAns_total": 3,
    }
    assert {k: pytest.approx(float(m[k])) for k in expected} == expected
    assert m["task"] == "squad_v2"


def test_resume_skips_done_and_drops_a_row_cut_by_a_crash(tmp_path):
    path = tmp_path / "results.csv"
    write(path, ROWS[:3])
    with open(path, "a") as f:  # a crash in the middle of a row
        f.write('q9,q9,squad_v2,"half a question')
    writer = ResultsWriter(path, COLUMNS)
    assert writer.done == {"q1", "q2", "q3"} and writer.rows_written == 3
    writer.write(ROWS[3:])
    df = read_results(path)
    assert df["example_id"].tolist() == [f"q{i}" for i in range(1, 7)]


def test_resume_drops_every_row_of_an_example_cut_by_a_crash(tmp_path):
    path = tmp_path / "results.csv"
    group = [{**ROWS[0], "id": f"q1/{slot}"} for slot in ("area", "name")]
    write(path, ROWS[1:3] + group)
    with open(path, "a") as f:  # the third row of example q1 was being written
        f.write('q1,q1/type,squad_v2,"cut')
    writer = ResultsWriter(path, COLUMNS)
    assert writer.done == {"q2", "q3"} and writer.rows_written == 2
    assert read_results(path)["id"].tolist() == ["q2", "q3"]


def test_resume_rejects_a_file_of_another_schema(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not this run's"):
        ResultsWriter(path, COLUMNS)


def test_missing_columns_are_a_clear_error(tmp_path):
    path = tmp_path / "old.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["Context", "Question", "Correct answers", "Model answer"], ["c", "q", "[]", "x"]])
    with pytest.raises(InputError, match=r"old.csv: missing result columns \['example_id'"):
        read_results(path)
    assert summarize_results.main([str(path)]) == 1


def test_cli_table_for_two_runs(tmp_path, capsys):
    write(tmp_path / "a" / "results.csv", ROWS)
    write(tmp_path / "b" / "results.csv", ROWS[:2])
    out = tmp_path / "summary.csv"
    plot = tmp_path / "summary.png"
    argv = [str(tmp_path / "a" / "results.csv"), str(tmp_path / "b"), "--output", str(out), "--plot", str(plot)]
    assert summarize_results.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("| run") and "| a " in printed and "| b " in printed
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["a", "b"] and float(rows[1]["exact"]) == 50.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summarize_results.main([str(tmp_path / "a"), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("run,task,constrain,status,total,")


def test_answers_column_is_json(tmp_path):
    path = tmp_path / "results.csv"
    write(path, ROWS[:1])
    with open(path) as f:
        first = next(csv.DictReader(f))
    assert json.loads(first["answers"]) == ["gold, with comma", 'a "quote"']


# Every character str.splitlines breaks a line at, "\n" and "\r" among them: none may end a row where the CSV
# writer does not (a resumed run would re-answer every row after it; a distributed run would never merge).
LINE_BREAKS = ["\n", "\r", "\r\n", "\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e"]


def breaking_rows(start: int) -> list[dict]:
    """One row per line break, holding it in its question, its gold answer and its raw output."""
    rows = []
    for k, brk in enumerate(LINE_BREAKS):
        rows.append(
            row(start + k, True, False, True, 0.0, 0.5, False, raw=f'{{"answer": "x{brk}y"}}')
            | {"question": f"where{brk}is it?", "answers": [f"gold{brk}answer"]}
        )
    return rows


def test_every_line_break_in_a_field_is_read_back_where_it_was_written(tmp_path, caplog):
    path = tmp_path / "results.csv"
    writer = ResultsWriter(path, COLUMNS)
    rows = breaking_rows(1)
    for one in rows:  # one write per example, as answer_examples does
        writer.write([one])
    written = path.read_bytes()
    caplog.set_level(logging.INFO)
    resumed = ResultsWriter(path, COLUMNS)
    assert resumed.done == {f"q{i}" for i in range(1, 12)} and resumed.rows_written == 11
    assert path.read_bytes() == written and "dropping" not in caplog.text
    assert read_complete_rows(path, COLUMNS) == (
        [
            [
                json.dumps(r[c], ensure_ascii=False) if c == "answers" else str({**ROW_DEFAULTS, **r}[c])
                for c in COLUMNS
            ]
            for r in rows
        ],
        False,
    )
    df = read_results(path)
    assert df["id"].tolist() == [f"q{i}" for i in range(1, 12)]
    assert df["question"].tolist() == [f"where{brk}is it?" for brk in LINE_BREAKS]
    assert df["answers"].tolist() == [[f"gold{brk}answer"] for brk in LINE_BREAKS]
    assert df["raw_output"].tolist() == [f'{{"answer": "x{brk}y"}}' for brk in LINE_BREAKS]
    assert df["prompt_tokens"].tolist() == list(range(101, 112))


def test_shards_holding_every_line_break_merge(tmp_path):
    rows = breaking_rows(1)
    ResultsWriter(shard_path(tmp_path, 0), COLUMNS).write(rows[:6])
    ResultsWriter(shard_path(tmp_path, 1), COLUMNS).write(rows[6:])
    ids = [f"q{i}" for i in range(1, 12)]
    assert answered_ids(tmp_path, COLUMNS, ids) == set(ids)
    merged = merge_shards(tmp_path, COLUMNS, ids)
    df = read_results(merged)
    assert df["id"].tolist() == ids and not (tmp_path / SHARDS).exists()
    assert df["question"].tolist() == [f"where{brk}is it?" for brk in LINE_BREAKS]
    assert df["raw_output"].tolist() == [f'{{"answer": "x{brk}y"}}' for brk in LINE_BREAKS]
    assert ResultsWriter(merged, COLUMNS).done == set(ids)


def test_a_bare_carriage_return_written_by_earlier_code_is_answered_again(tmp_path, caplog):
    """Earlier code wrote a "\\r" unquoted, which ends its row for every reader: resuming drops that row and the
    ones after it (they are answered again, quoted), instead of stopping on a csv error at every re-run."""
    path = tmp_path / "results.csv"
    first = write(path, ROWS[:1])
    legacy = [("q2" if c in ("example_id", "id") else "x\ry" if c == "raw_output" else "[]") for c in COLUMNS]
    with open(path, "a", newline="") as f:
        f.write(",".join(legacy) + "\n")
    first.write(ROWS[2:3])
    writer = ResultsWriter(path, COLUMNS)
    assert writer.done == {"q1"} and writer.rows_written == 1
    assert "dropping the incomplete end" in caplog.text
    writer.write([ROWS[1] | {"raw_output": "x\ry"}, ROWS[2]])
    df = read_results(path)
    assert df["id"].tolist() == ["q1", "q2", "q3"] and df["raw_output"][1] == "x\ry"


def test_runs_are_named_by_the_shortest_part_of_their_path_that_tells_them_apart(tmp_path):
    from llama_squad.summary import run_names

    runs = tmp_path / "runs"
    assert run_names([runs / "a" / "eval" / "results.csv", runs / "b" / "eval" / "results.csv"]) == ["a", "b"]
    twins = [tmp_path / folder / "a" / "eval" / "results.csv" for folder in ("x", "y")]
    assert run_names(twins) == ["x/a", "y/a"]
    assert run_names([tmp_path / "a" / "results.csv", tmp_path / "other.csv"]) == ["a", "other"]


def test_the_printed_table_is_narrow_unless_all(tmp_path, capsys):
    write(tmp_path / "runs" / "a" / "eval" / "results.csv", ROWS)
    path = str(tmp_path / "runs" / "a" / "eval" / "results.csv")
    assert summarize_results.main([path]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "run",
        "task",
        "constrain",
        "status",
        "total",
        "valid_json",
        "exact",
        "f1",
        "HasAns_exact",
        "NoAns_exact",
    ]
    assert summarize_results.main([path, "--all"]) == 0
    assert "exact_valid_json" in capsys.readouterr().out.splitlines()[0]

"""SQuAD v2 → chat dataset: splits by article, prompts, JSON targets, and clear errors on bad input."""

import json

import pytest
from datasets import load_from_disk

import create_dataset
from llama_squad.answers import parse_json_answer
from llama_squad.files import InputError
from llama_squad.tasks import squad_v2
from llama_squad.tasks.squad_v2 import Arguments, Record, build_dataset, build_messages, read_squad


def squad_file(tmp_path, articles, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"version": "v2.0", "data": articles}), encoding="utf-8")
    return path


def article(title, context, qas):
    return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}


def qa(qid, question, answers=(), context=None):
    answers = [{"text": t, "answer_start": context.index(t) if context else 0} for t in answers]
    return {"id": qid, "question": question, "answers": answers, "is_impossible": not answers}


CTX = 'The "Blue" café opened in Zürich in 1901.\nIt sells tea.'


def small_file(tmp_path):
    arts = [
        article(f"T{i}", CTX, [qa(f"q{i}a", "When did it open?", ["1901"], CTX), qa(f"q{i}b", "Who owns it?")])
        for i in range(10)
    ]
    return squad_file(tmp_path, arts)


# ------------------------------------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def dev_split(squad_dev):
    args = Arguments(task="squad_v2", output_dir="unused", train_file=str(squad_dev), test_articles="25:35")
    return build_dataset(args)


def test_dev_split_protocol_counts_and_disjoint_articles(dev_split, squad_dev):
    sizes = {name: len(split) for name, split in dev_split.items()}
    assert sum(sizes.values()) == 11873
    assert sizes["test"] == 3856
    assert sizes["train"] + sizes["validation"] == 8017
    titles = {name: set(split["title"]) for name, split in dev_split.items()}
    assert not titles["train"] & titles["validation"]
    assert not titles["train"] & titles["test"]
    assert not titles["validation"] & titles["test"]
    official = json.loads(squad_dev.read_text())["data"]
    assert titles["test"] == {a["title"] for a in official[25:35]}
    assert len(titles["validation"]) == 1  # round(0.05 * 25) articles
    ids = [i for split in dev_split.values() for i in split["id"]]
    assert len(set(ids)) == len(ids)


def test_dev_split_is_deterministic_and_seeded(squad_dev, dev_split):
    args = Arguments(task="squad_v2", output_dir="unused", train_file=str(squad_dev), test_articles="25:35")
    assert build_dataset(args)["validation"]["id"] == dev_split["validation"]["id"]
    args.seed = 7
    assert set(build_dataset(args)["validation"]["title"]) != set(dev_split["validation"]["title"])


def test_real_rows_keep_every_gold_answer_and_train_on_the_first(dev_split):
    row = next(r for r in dev_split["train"] if r["id"] == "56ddde6b9a695914005b9628")
    assert row["question"] == "In what country is Normandy located?"
    assert row["answers"] == ["France"] * 4
    assert row["completion"] == [{"role": "assistant", "content": '{"answer": "France"}'}]
    test = dev_split["test"]
    assert sum(r == [] for r in test["answers"]) == sum(test["is_impossible"])
    multi = [a for a in test["answers"] if len(set(a)) > 1]
    assert multi, "the test split keeps alternative gold answers"
    impossible = next(r for r in test if r["is_impossible"])
    assert impossible["completion"][0]["content"] == '{"answer": "?"}'


# ------------------------------------------------------------------------------------------------ prompts


def test_single_turn_messages_exact():
    record = Record("x", "T", "Paris is in France.", "Where is Paris?", ("France",), 0)
    prompt, completion = build_messages(record, "single_turn", "Be brief.")
    assert prompt == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": "Context: Paris is in France.\n\nQuestion: Where is Paris?\n\n"
            "Copy from the context the shortest span that answers the question, word for word. "
            'Reply with JSON only, in the form {"answer": "..."}. '
            'If the context does not answer the question, reply {"answer": "?"}.',
        },
    ]
    assert completion == [{"role": "assistant", "content": '{"answer": "France"}'}]
    prompt, _ = build_messages(record, "single_turn", "")
    assert [m["role"] for m in prompt] == ["user"]


def test_multi_turn_every_assistant_turn_is_a_target():
    answerable = Record("x", "T", "c", "q", ("Paris", "the city"), 0)
    _, completion = build_messages(answerable, "multi_turn", "s")
    assert [m["role"] for m in completion] == ["assistant", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in completion[::2]] == ["yes", "Paris", '{"answer": "Paris"}']
    _, completion = build_messages(Record("y", "T", "c", "q", (), 0), "multi_turn", "s")
    assert [m["content"] for m in completion[::2]] == ["no", "?", '{"answer": "?"}']


@pytest.mark.parametrize("answer", ['He said "hi"', "back\\slash", "two\nlines", "Zürich café ✓", "tab\there"])
def test_json_targets_escape_and_round_trip(answer):
    _, completion = build_messages(Record("x", "T", "c", "q", (answer,), 0), "single_turn", "")
    text = completion[0]["content"]
    assert json.loads(text) == {"answer": answer}
    assert "\n" not in text and ("ü" not in answer or "ü" in text)  # one line, non-ASCII kept
    assert parse_json_answer(text).answer == answer


# ------------------------------------------------------------------------------------------------ sources


def test_jsonl_source_matches_official_json(tmp_path):
    official = read_squad(small_file(tmp_path))
    lines = [
        {
            "id": r.id,
            "title": r.title,
            "context": r.context,
            "question": r.question,
            "answers": {"text": list(r.answers), "answer_start": [r.context.index(a) for a in r.answers]},
        }
        for r in official
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert read_squad(path) == official


def test_test_file_source_and_split_flags(tmp_path):
    train = small_file(tmp_path)
    test = squad_file(tmp_path, [article("Z", CTX, [qa("z1", "When?", ["1901"], CTX)])], "test.json")
    args = Arguments(task="squad_v2", output_dir="unused", train_file=str(train), test_file=str(test))
    ds = build_dataset(args)
    assert ds["test"]["id"] == ["z1"]
    assert len(ds["train"]) + len(ds["validation"]) == 20
    args.test_articles = "0:2"
    with pytest.raises(ValueError, match="either --test_file or --test_articles"):
        build_dataset(args)
    with pytest.raises(ValueError, match="no test questions"):
        build_dataset(Arguments(task="squad_v2", output_dir="unused", train_file=str(train)))


# ------------------------------------------------------------------------------------------------ bad input


def bad_case(tmp_path, name):
    good = [qa("a1", "When?", ["1901"], CTX)]
    cases = {
        "no id": [article("A", CTX, [{**good[0], "id": ""}])],
        "duplicate id": [article("A", CTX, good), article("B", CTX, good)],
        "answer_start mismatch": [article("A", CTX, [{**good[0], "answers": [{"text": "1901", "answer_start": 3}]}])],
        "empty context": [article("A", "  ", [qa("a1", "When?")])],
    }
    return squad_file(tmp_path, cases[name])


@pytest.mark.parametrize("kind", ["no id", "duplicate id", "answer_start mismatch", "empty context"])
def test_bad_records_name_file_record_and_fix(tmp_path, kind):
    path = bad_case(tmp_path, kind)
    with pytest.raises(InputError) as error:
        read_squad(path)
    message = str(error.value)
    assert str(path) in message and kind in message and "--skip_invalid" in message
    assert "article" in message and "question" in message


def test_skip_invalid_counts_and_logs(tmp_path, caplog):
    path = squad_file(
        tmp_path,
        [article("A", CTX, [qa("a1", "When?", ["1901"], CTX), {**qa("a2", "Who?"), "id": ""}, qa("a1", "Again?")])],
    )
    records = read_squad(path, skip_invalid=True)
    assert [r.id for r in records] == ["a1"]
    assert "skipped 2 invalid records (1 duplicate id, 1 no id)" in caplog.text


@pytest.mark.parametrize("content", ['{"version": "v2.0", "data": [{"title": "A", "parag', "not json", ""])
def test_malformed_or_truncated_json(tmp_path, content):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(InputError, match=r"broken.json: not valid JSON .* line 1, column \d+.*truncated"):
        read_squad(path)


def test_malformed_jsonl_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = {"id": "a", "title": "T", "context": "c", "question": "q?", "answers": {"text": [], "answer_start": []}}
    path.write_text(json.dumps(good) + '\n{"id": \n')
    with pytest.raises(InputError, match="rows.jsonl: line 2 is not valid JSON"):
        read_squad(path)


def test_failed_run_writes_nothing_and_existing_output_is_kept(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "bad").mkdir()
    bad = bad_case(tmp_path / "bad", "duplicate id")
    assert (
        create_dataset.main(
            ["--task", "squad_v2", "--train_file", str(bad), "--test_articles", "1:2", "--output_dir", str(out)]
        )
        == 1
    )
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad"]
    good = small_file(tmp_path)
    argv = ["--task", "squad_v2", "--train_file", str(good), "--test_articles", "8:10", "--output_dir", str(out)]
    assert create_dataset.main(argv) == 0
    assert create_dataset.main(argv) == 1  # exists, no --overwrite
    assert create_dataset.main(argv + ["--overwrite"]) == 0
    ds = load_from_disk(str(out))
    assert {k: len(v) for k, v in ds.items()} == {"train": 14, "validation": 2, "test": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "data.json", "out"]


def test_unknown_option_is_an_error(tmp_path):
    with pytest.raises(SystemExit) as exit:
        create_dataset.main(["--task", "squad_v2", "--output_dir", str(tmp_path), "--trian_file", "x"])
    assert exit.value.code == 2


def test_score_output_rows():
    example = {"answers": ["France", "the French Republic"], "title": "T"}
    (row,) = squad_v2.score_output('{"answer": "the French republic!"}', example)
    assert row["exact"] == 1.0 and row["valid_json"] and row["has_answer"] and not row["abstained"]
    (row,) = squad_v2.score_output('Sure: {"answer": "?"} hope it helps', {"answers": [], "title": "T"})
    assert row["abstained"] and not row["valid_json"] and row["exact"] == 1.0 and not row["has_answer"]
    (row,) = squad_v2.score_output("I don't know", {"answers": [], "title": "T"})
    assert not row["answer_found"] and row["parsed_answer"] == "" and row["exact"] == 1.0 and not row["abstained"]

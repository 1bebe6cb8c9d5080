"""MultiWOZ DST: reading 2.1 and 2.2 dialogues, slot questions, history truncation, scoring and sanity checks."""

import json
import logging
import math
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from datasets import load_from_disk

import create_dataset
from llama_squad.answers import format_json_answer
from llama_squad.files import InputError
from llama_squad.tasks import get_task, multiwoz
from llama_squad.tasks.multiwoz import (
    ANSWER_INSTRUCTION,
    DOMAIN_INSTRUCTION,
    SLOT_NAMES,
    TRUNCATION_MARKER,
    Arguments,
    Dialogue,
    TokenCounter,
    build_dataset,
    build_messages,
    build_split,
    default_slots,
    fuzzy_value,
    load_schema,
    make_questions,
    normalize_value,
    read_dialogues,
    score_output,
    summarize,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MULTIWOZ21 = DATA / "multiwoz21"
SCHEMA22 = DATA / "multiwoz22" / "schema.json"
SMOLLM2 = REPO.parent / "shared" / "tokenizers" / "smollm2-135m-instruct"
FIXTURES22 = Path(__file__).resolve().parent / "fixtures" / "multiwoz22"
DEMO = REPO / "data" / "demo" / "multiwoz_demo.json"

SLOT_QUESTIONS = make_questions(default_slots(), "slot", False)
DOMAIN_QUESTIONS = make_questions(default_slots(), "domain", False)


def need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: {what} needs ../shared/data beside the checkout")
    return path


@pytest.fixture(scope="module")
def test21() -> list[Dialogue]:
    return read_dialogues(need(MULTIWOZ21 / "test.json.zip", "the MultiWOZ 2.1 test set"))


def answer_rows(dataset) -> list[dict]:
    """The rows of a built split without their (large) prompt columns."""
    columns = dataset.remove_columns(["prompt", "completion"]).to_dict()
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def score_all(rows: list[dict], output) -> pd.DataFrame:
    """Results of answering every row with ``output(row)``, as test.py would record them."""
    results = []
    for row in rows:
        for scored in score_output(output(row), row):
            results.append({"example_id": row["id"], "id": row["id"], "answers": row["answers"], **scored})
    return pd.DataFrame(results)


def gold_output(row: dict) -> str:
    if "slots" in row:
        values = zip(row["slots"], row["slot_answers"], strict=True)
        return json.dumps({s.split("-", 1)[1]: (a[0] if a else "?") for s, a in values})
    return format_json_answer(row["answers"][0] if row["answers"] else "?")


# ---------------------------------------------------------------------------------------------------- real 2.1 data


def test_real_split_sizes_and_list_files(test21):
    val = read_dialogues(need(MULTIWOZ21 / "val.json.zip", "the MultiWOZ 2.1 dev set"))
    assert (len(val), sum(len(d.states) for d in val)) == (999, 7365)
    assert (len(test21), sum(len(d.states) for d in test21)) == (1000, 7372)
    listed = (MULTIWOZ21 / "testListFile").read_text().split()
    assert {d.dialogue_id for d in test21} == {i.removesuffix(".json") for i in listed}


def test_hand_checked_dialogue_at_turn_2(test21):
    """MUL0845: restaurant in the centre → cheap singaporean → italian (turn 2)."""
    dialogue = next(d for d in test21 if d.dialogue_id == "MUL0845")
    dataset, stats = build_split([dialogue], SLOT_QUESTIONS, system_prompt="Be precise.")
    assert (stats.turns, stats.examples) == (9, 9 * 30)
    turn2 = [row for row in dataset if row["turn"] == 2]
    assert [row["slot"] for row in turn2] == list(SLOT_NAMES)
    answers = {row["slot"]: row["answers"] for row in turn2 if row["answers"]}
    assert answers == {
        "restaurant-area": ["centre"],
        "restaurant-food": ["italian"],
        "restaurant-pricerange": ["cheap"],
    }
    food = next(row for row in turn2 if row["slot"] == "restaurant-food")
    assert food["id"] == "MUL0845/2/restaurant-food"
    assert food["completion"] == [{"role": "assistant", "content": '{"answer": "italian"}'}]
    assert food["question"] == (
        "What value does the user want for restaurant-food (the cuisine of the restaurant you are looking for)?"
    )
    assert food["prompt"] == [
        {"role": "system", "content": "Be precise."},
        {
            "role": "user",
            "content": ANSWER_INSTRUCTION + "\n\nDialogue:\n"
            "User: I 'm looking for a restaurant in the centre of town\n"
            "System: There are over 60 restaurants near the center of town , do you have a cuisine or price range "
            "in mind ?\n"
            "User: Yes , something in the affordable price range . Also , do any of them serve singaporean food ?\n"
            "System: There are no Singaporean restaurants , but there are cheap ones offering several different "
            "cuisines .\n"
            "User: Okay what about Italian food then ?\n"
            "\nQuestion: What value does the user want for restaurant-food (the cuisine of the restaurant you are "
            "looking for)?",
        },
    ]
    hotel = next(row for row in turn2 if row["slot"] == "hotel-name")
    assert hotel["answers"] == [] and hotel["completion"][0]["content"] == '{"answer": "?"}'
    assert ANSWER_INSTRUCTION == (
        'Answer the question that follows the dialogue. Reply with JSON only, in the form {"answer": "..."}. Reply '
        '{"answer": "dontcare"} if the user has no preference, and {"answer": "?"} if the dialogue has not set this '
        "value."
    )


def test_dontcare_is_its_own_value(test21):
    dialogue = next(d for d in test21 if d.dialogue_id == "PMUL3027")
    assert dialogue.states[1]["attraction-type"] == ("dontcare",)


@pytest.fixture(scope="module")
def test21_rows(test21) -> list[dict]:
    dataset, _ = build_split(test21, SLOT_QUESTIONS)
    return answer_rows(dataset)


@pytest.fixture(scope="module")
def gold_metrics(test21_rows) -> dict:
    return summarize(score_all(test21_rows, gold_output))


def goal_domain_turns(path: Path) -> dict[str, int]:
    """User turns of the dialogues whose goal names each domain, straight from the raw 2.1 JSON."""
    data = json.loads(zipfile.ZipFile(path).read(path.name.removesuffix(".zip")))
    domains = ("attraction", "hotel", "restaurant", "taxi", "train")
    return {d: sum(len(x["log"]) // 2 for x in data.values() if x["goal"].get(d)) for d in domains}


def test_gold_predictions_score_100(gold_metrics):
    metrics = gold_metrics
    assert metrics["turns"] == metrics["complete_turns"] == 7372
    for key in ("jga", "jga_fuzzy", "jga_trade", "slot_accuracy", "slot_precision", "slot_recall", "slot_f1",
                "valid_json"):  # fmt: skip
        assert metrics[key] == 100.0, key
    turns = goal_domain_turns(MULTIWOZ21 / "test.json.zip")
    assert turns == {"attraction": 3114, "hotel": 3204, "restaurant": 3359, "taxi": 1550, "train": 3808}
    for domain in ("attraction", "hotel", "restaurant", "taxi", "train"):
        assert metrics[f"jga_{domain}"] == metrics[f"jga_trade_{domain}"] == 100.0
        assert metrics[f"turns_{domain}"] == turns[domain]  # picked by the dialogues' goals


def canonical_output(row: dict) -> str:
    """The gold answer in TRADE's spelling ("guest house", "nightclub", "restaurant 17", ...)."""
    label = multiwoz.normalize_label_trade(row["answers"][0], row["slot"]) if row["answers"] else ""
    return format_json_answer(label or "?")


def test_trade_spellings_score_as_the_raw_gold_under_trade_labels(test21_rows, gold_metrics):
    """A model that writes TRADE's label spellings loses 13.5 points of strict JGA on the 2.1 test split (997 of its
    7,372 turns hold a value whose label differs beyond case, 812 of them the hotel type "guesthouse"); under
    TRADE's labels it scores what a model writing the raw gold does."""
    metrics = summarize(score_all(test21_rows, canonical_output))
    assert metrics["jga"] == pytest.approx(100 * (7372 - 997) / 7372)  # 86.48
    assert metrics["jga_fuzzy"] == pytest.approx(100 * 7301 / 7372)  # 99.04: fuzzy misses "restaurant 17", ...
    assert metrics["jga_trade"] == gold_metrics["jga_trade"] == 100.0
    assert metrics["jga_hotel"] == pytest.approx(100 * 2364 / 3204)
    for domain in ("attraction", "hotel", "restaurant", "taxi", "train"):
        assert metrics[f"jga_trade_{domain}"] == gold_metrics[f"jga_trade_{domain}"] == 100.0


def empty_state_fraction(path: Path) -> float:
    """Share of user turns whose 30-slot state is empty, straight from the raw 2.1 JSON."""
    data = json.loads(zipfile.ZipFile(path).read(path.name.removesuffix(".zip")))
    empty = total = 0
    for dialogue in data.values():
        for turn in dialogue["log"][1::2]:
            total += 1
            values = [
                v
                for domain in ("attraction", "hotel", "restaurant", "taxi", "train")
                for part in ("semi", "book")
                for k, v in turn["metadata"][domain][part].items()
                if k != "booked"
            ]
            empty += all(v in ("", "not mentioned", "none") for v in values)
    return empty / total


def test_all_abstain_jga_is_the_share_of_empty_states(test21_rows):
    metrics = summarize(score_all(test21_rows, lambda row: '{"answer": "?"}'))
    expected = 100 * empty_state_fraction(MULTIWOZ21 / "test.json.zip")
    assert metrics["jga"] == pytest.approx(expected, abs=1e-9)
    assert 1.0 < metrics["jga"] < 2.0  # 107 of the 7,372 test turns
    assert metrics["slot_recall"] == 0.0 and math.isnan(metrics["slot_precision"]) and metrics["slot_f1"] == 0.0
    assert metrics["abstain_recall"] == 100.0


def test_train_on_dev_test_on_test_is_one_command(tmp_path):
    need(MULTIWOZ21, "the MultiWOZ 2.1 data")
    out = tmp_path / "multiwoz21"
    argv = ["--task", "multiwoz", "--train_file", str(MULTIWOZ21 / "val.json.zip"), "--test_file",
            str(MULTIWOZ21 / "test.json.zip"), "--max_dialogues_per_split", "3", "--max_length", "0",
            "--output_dir", str(out)]  # fmt: skip
    assert create_dataset.main(argv) == 0
    dataset = load_from_disk(str(out))
    assert dataset["test"][0]["id"] == "SNG0073/0/attraction-area"  # the first test dialogue
    assert len({r.split("/")[0] for r in dataset["test"]["id"]}) == 3
    assert len(dataset["test"]) == 30 * sum(len(d.states) for d in read_dialogues(MULTIWOZ21 / "test.json.zip")[:3])
    train_ids = set(dataset["train"]["dialogue_id"]) | set(dataset["validation"]["dialogue_id"])
    assert not train_ids & set(dataset["test"]["dialogue_id"])


def test_official_layout_with_list_files(tmp_path):
    need(MULTIWOZ21, "the MultiWOZ 2.1 data")
    raw = json.loads(zipfile.ZipFile(MULTIWOZ21 / "val.json.zip").read("val.json"))
    ids = list(raw)[:6]
    (tmp_path / "data.json").write_text(json.dumps({f"{i}.json": raw[i] for i in ids}))
    (tmp_path / "valListFile").write_text(f"{ids[0]}.json\n")
    (tmp_path / "testListFile").write_text(f"{ids[1]}.json\n{ids[2]}.json\n")
    args = Arguments(output_dir="unused", data_file=str(tmp_path / "data.json"), max_length=0,
                     val_list=str(tmp_path / "valListFile"), test_list=str(tmp_path / "testListFile"))  # fmt: skip
    dataset = build_dataset(args)
    assert sorted(set(dataset["validation"]["dialogue_id"])) == [ids[0]]
    assert sorted(set(dataset["test"]["dialogue_id"])) == sorted(ids[1:3])
    assert sorted(set(dataset["train"]["dialogue_id"])) == sorted(ids[3:])
    (tmp_path / "testListFile").write_text("PMUL0000.json\n")
    with pytest.raises(InputError, match=r"testListFile: 1 listed dialogues are not in .*data.json.*'PMUL0000'"):
        build_dataset(args)


def demo_list_args(tmp_path, val_lines: str, test_lines: str) -> list[str]:
    """create_dataset.py's command line of the demo dialogues split by list files of ``val_lines``/``test_lines``."""
    (tmp_path / "valListFile").write_text(val_lines)
    (tmp_path / "testListFile").write_text(test_lines)
    return ["--task", "multiwoz", "--data_file", str(DEMO), "--val_list", str(tmp_path / "valListFile"), "--test_list",
            str(tmp_path / "testListFile"), "--max_length", "0", "--output_dir", str(tmp_path / "out")]  # fmt: skip


def test_a_dialogue_listed_twice_in_a_list_file_is_an_error(tmp_path, caplog):
    argv = demo_list_args(tmp_path, "DEMO0004.json\n", "DEMO0005.json\nDEMO0006.json\n\nDEMO0005\n")
    assert create_dataset.main(argv) == 1
    assert not (tmp_path / "out").exists()
    assert caplog.messages[-1] == (
        f"{tmp_path / 'testListFile'}: dialogue 'DEMO0005' is listed twice (lines 1 and 4), which would repeat its "
        "question ids: remove the repeated line"
    )


def test_a_dialogue_in_both_the_validation_and_the_test_list_is_an_error(tmp_path, caplog):
    argv = demo_list_args(tmp_path, "DEMO0004.json\nDEMO0006.json\n", "DEMO0005.json\nDEMO0006.json\n")
    assert create_dataset.main(argv) == 1
    assert not (tmp_path / "out").exists()
    assert caplog.messages[-1] == (
        f"{tmp_path / 'valListFile'} and {tmp_path / 'testListFile'} both list dialogue 'DEMO0006' (1 dialogue in "
        "both): a dialogue belongs to one split: remove it from one of the list files"
    )
    # the demo's own list files make three disjoint splits
    demo = DEMO.parent
    argv = demo_list_args(tmp_path, (demo / "multiwoz_demo_valListFile").read_text(),
                          (demo / "multiwoz_demo_testListFile").read_text())  # fmt: skip
    assert create_dataset.main(argv) == 0
    splits = load_from_disk(str(tmp_path / "out"))
    assert {name: sorted(set(split["dialogue_id"])) for name, split in splits.items()} == {
        "train": ["DEMO0001", "DEMO0002", "DEMO0003"],
        "validation": ["DEMO0004"],
        "test": ["DEMO0005", "DEMO0006"],
    }


def test_builtin_schema_is_multiwoz22s():
    assert load_schema(need(SCHEMA22, "MultiWOZ 2.2's schema.json")) == default_slots()


# ---------------------------------------------------------------------------------------------------- 2.2 fixtures


def test_reads_multiwoz22_states_with_alternatives():
    train = read_dialogues(FIXTURES22 / "train")
    assert [d.dialogue_id for d in train] == ["PMUL9001", "SNG9002"]
    assert [len(d.states) for d in train] == [4, 2]
    state = train[0].states[2]
    assert state["hotel-name"] == ("acorn guest house", "acorn")
    assert state["taxi-departure"] == ("acorn guest house", "acorn")  # a copy_from slot
    assert state["taxi-leaveat"] == ("09:30", "9:30")
    assert train[0].states[3] == state  # the state is cumulative
    assert train[1].states[0]["restaurant-area"] == ("dontcare",)
    dev = read_dialogues(FIXTURES22 / "dev" / "dialogues_001.json")
    assert "hospital-department" not in dev[0].states[1]  # not one of the 30 tracked slots
    assert dev[0].states[1] == {"train-destination": ("ely",), "train-day": ("tuesday",),
                                "train-departure": ("cambridge",), "train-arriveby": ("10:15",)}  # fmt: skip


def fixture_args(**kwargs) -> Arguments:
    return Arguments(output_dir="unused", train_file=str(FIXTURES22 / "train"),
                     validation_file=str(FIXTURES22 / "dev"), test_file=str(FIXTURES22 / "test"), max_length=0,
                     **kwargs)  # fmt: skip


def test_multiwoz22_dataset_and_alternative_answers():
    dataset = build_dataset(fixture_args())
    assert {name: len(split) for name, split in dataset.items()} == {"train": 180, "validation": 60, "test": 90}
    row = next(r for r in dataset["train"] if r["id"] == "PMUL9001/2/hotel-name")
    assert row["answers"] == ["acorn guest house", "acorn"]
    assert row["completion"][0]["content"] == '{"answer": "acorn guest house"}'  # the first alternative
    for output in ('{"answer": "acorn"}', '{"answer": "Acorn Guest House"}'):
        assert score_output(output, row)[0]["exact"] == 1.0
    leave = next(r for r in dataset["train"] if r["id"] == "PMUL9001/2/taxi-leaveat")
    assert score_output('{"answer": "9:30"}', leave)[0]["exact"] == 1.0


def test_domain_granularity_asks_each_domain_once_and_scores_each_slot():
    dataset = build_dataset(fixture_args(granularity="domain"))
    assert len(dataset["train"]) == 6 * 5
    row = next(r for r in dataset["train"] if r["id"] == "PMUL9001/1/hotel")
    assert row["slots"] == [s for s in SLOT_NAMES if s.startswith("hotel-")]
    assert json.loads(row["completion"][0]["content"]) == {
        "area": "north", "bookday": "friday", "bookpeople": "2", "bookstay": "3", "internet": "yes",
        "name": "acorn guest house", "parking": "?", "pricerange": "cheap", "stars": "?", "type": "guesthouse",
    }  # fmt: skip
    assert row["prompt"][-1]["content"].startswith(DOMAIN_INSTRUCTION + "\n\nDialogue:\n")
    assert row["prompt"][-1]["content"].endswith(
        'Reply in the form {"area": "...", "bookday": "...", "bookpeople": "...", "bookstay": "...", '
        '"internet": "...", "name": "...", "parking": "...", "pricerange": "...", "stars": "...", "type": "..."}'
    )
    rows = score_output('{"area": "north", "name": "acorn", "stars": 4}', row)
    assert [r["id"] for r in rows] == [f"PMUL9001/1/hotel/{s}" for s in row["slots"]]
    by_slot = {r["slot"]: r for r in rows}
    assert by_slot["hotel-area"]["exact"] == by_slot["hotel-name"]["exact"] == 1.0
    assert by_slot["hotel-stars"]["exact"] == 0.0 and by_slot["hotel-stars"]["parsed_answer"] == "4"
    assert by_slot["hotel-parking"]["exact"] == 1.0  # missing key: not set, as the gold
    assert by_slot["hotel-bookday"]["exact"] == 0.0 and not by_slot["hotel-bookday"]["answer_found"]
    assert all(r["valid_json"] for r in rows)
    assert by_slot["hotel-area"]["answers"] == ["north"]
    assert by_slot["hotel-area"]["question"].startswith("What value does the user want for hotel-area")


def test_domain_granularity_gold_scores_100_on_fixtures():
    dataset = build_dataset(fixture_args(granularity="domain"))
    metrics = summarize(score_all(answer_rows(dataset["train"]), gold_output))
    assert (metrics["jga"], metrics["complete_turns"], metrics["examples"]) == (100.0, 6, 30)


def test_downsampling_empty_answers_applies_to_training_only():
    full = build_dataset(fixture_args())
    none = build_dataset(fixture_args(keep_empty_fraction=0.0))
    assert all(r for r in none["train"]["answers"])
    assert len(none["train"]) == sum(bool(r) for r in full["train"]["answers"])
    assert len(none["test"]) == len(full["test"]) == 90


def test_categorical_values_in_the_question():
    questions = {q.name: q for q in make_questions(default_slots(), "slot", True)}
    assert questions["hotel-pricerange"].text == (
        "What value does the user want for hotel-pricerange (price budget of the hotel)? "
        "Possible values: expensive, cheap, moderate."
    )
    assert questions["hotel-name"].text == "What value does the user want for hotel-name (name of the hotel)?"


# ---------------------------------------------------------------------------------------------------- truncation


class WordCounter:
    """A stand-in tokenizer: one token per whitespace-separated word, 2 per message for the chat template."""

    def texts(self, texts):
        return [len(t.split()) for t in texts]

    def chat(self, messages):
        return sum(len(m["content"].split()) + 2 for m in messages)


def test_history_is_cut_from_the_left_never_the_current_turn():
    utterances = [("User", "one two three four five six"), ("System", "seven eight nine ten"),
                  ("User", "eleven twelve"), ("System", "thirteen fourteen fifteen"), ("User", "sixteen")]  # fmt: skip
    dialogue = Dialogue("D1", utterances, [4], [{}])  # the user turn asked about is the last utterance
    question = SLOT_QUESTIONS[0]
    counter = WordCounter()
    prompt, completion = build_messages("", question, '{"answer": "?"}', "")
    fixed = counter.chat(prompt + completion)  # everything but the dialogue lines
    words = [7, 5, 3, 4, 2]  # of each line ("User: ...\n"); the marker has 4
    assert len(TRUNCATION_MARKER.split()) == 4
    cases = [(21, 0), (20, 1), (18, 1), (17, 2), (13, 2), (12, 3), (10, 3), (9, 4), (6, 4), (5, 4), (1, 4)]
    for budget, first_kept in cases:
        dataset, stats = build_split([dialogue], [question], max_length=fixed + budget, counter=counter)
        content = dataset[0]["prompt"][0]["content"]
        kept = "".join(f"{s}: {t}\n" for s, t in utterances[first_kept:])
        expected = (TRUNCATION_MARKER if first_kept else "") + kept
        assert f"\n\nDialogue:\n{expected}\nQuestion:" in content, budget
        length = counter.chat(dataset[0]["prompt"] + dataset[0]["completion"])
        assert length == fixed + sum(words[first_kept:]) + (4 if first_kept else 0)
        assert (stats.truncated, stats.too_long) == (int(first_kept > 0), int(budget < 6)), budget


def test_truncated_examples_fit_max_length_with_a_real_tokenizer(test21):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(need(SMOLLM2, "the SmolLM2 tokenizer"))
    dialogues = sorted(test21, key=lambda d: -len(d.utterances))[:4]
    dataset, stats = build_split(dialogues, SLOT_QUESTIONS[:6], max_length=220, counter=TokenCounter(tokenizer))
    assert stats.truncated > 0
    lines = {d.dialogue_id: [f"{s}: {t}\n" for s, t in d.utterances] for d in dialogues}
    positions = {d.dialogue_id: d.user_positions for d in dialogues}
    overflowing = 0
    for row in dataset:
        length = len(tokenizer.apply_chat_template(row["prompt"] + row["completion"])["input_ids"])
        history = row["prompt"][-1]["content"].split("\n\nDialogue:\n", 1)[1].split("\nQuestion:")[0]
        end = positions[row["dialogue_id"]][row["turn"]] + 1
        full = "".join(lines[row["dialogue_id"]][:end])
        if history.startswith(TRUNCATION_MARKER):
            kept = history.removeprefix(TRUNCATION_MARKER)
            assert full.endswith(kept) and kept.startswith(("User: ", "System: "))
        else:
            assert history == full
        if length > 220:
            assert history.removeprefix(TRUNCATION_MARKER) == lines[row["dialogue_id"]][end - 1]  # the turn alone
            overflowing += 1
    assert overflowing == stats.too_long


# ---------------------------------------------------------------------------------------------------- bad input


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"PMUL0001.json": {"log": [')
    with pytest.raises(InputError, match=r"data\.json: not valid JSON .*malformed or truncated"):
        read_dialogues(path)
    zipped = tmp_path / "val.json.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("val.json", '{"x": ')
    with pytest.raises(InputError, match=r"val\.json\.zip \(val\.json\): not valid JSON"):
        read_dialogues(zipped)


def test_dialogue_without_log_names_the_dialogue_and_the_fix(tmp_path):
    path = tmp_path / "data.json"
    good = json.loads(DEMO.read_text())["DEMO0001.json"]
    path.write_text(json.dumps({"GOOD1.json": good, "BAD1.json": {"goal": {}}, "GOOD2.json": good}))
    with pytest.raises(InputError) as error:
        read_dialogues(path)
    message = str(error.value)
    assert str(path) in message and "dialogue 'BAD1'" in message and "has no 'log' list" in message
    assert "--skip_invalid" in message
    assert [d.dialogue_id for d in read_dialogues(path, skip_invalid=True)] == ["GOOD1", "GOOD2"]


def test_odd_log_and_missing_metadata_are_errors(tmp_path):
    good = json.loads(DEMO.read_text())["DEMO0001.json"]
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"ODD.json": {"log": good["log"][:3]}}))
    with pytest.raises(InputError, match="dialogue 'ODD': its log has 3 turns, an odd number"):
        read_dialogues(path)
    log = [dict(t) for t in good["log"]]
    log[1]["metadata"] = {}
    path.write_text(json.dumps({"NOMETA.json": {"log": log}}))
    with pytest.raises(InputError, match=r"dialogue 'NOMETA': log\[1\] \(system\) has no 'metadata' belief state"):
        read_dialogues(path)


def test_multiwoz22_frame_without_state_is_an_error(tmp_path):
    dialogues = json.loads((FIXTURES22 / "test" / "dialogues_001.json").read_text())
    del dialogues[0]["turns"][2]["frames"][1]["state"]
    path = tmp_path / "dialogues_001.json"
    path.write_text(json.dumps(dialogues))
    with pytest.raises(InputError) as error:
        read_dialogues(tmp_path)
    message = str(error.value)
    assert f"{path}: dialogue 'MUL9004': turn '2' (USER): the frame of service 'restaurant' has no 'state'" in message
    assert "slot_values" in message and "--skip_invalid" in message


def test_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no test dialogues: pass --test_file"):
        build_dataset(Arguments(output_dir="x", train_file=str(FIXTURES22 / "train"), max_length=0))
    with pytest.raises(ValueError, match="no input"):
        build_dataset(Arguments(output_dir="x"))
    with pytest.raises(ValueError, match="--granularity 'turn'"):
        build_dataset(fixture_args(granularity="turn"))
    with pytest.raises(InputError, match="a folder without dialogues_"):
        read_dialogues(tmp_path)
    (tmp_path / "schema.json").write_text("[]")
    with pytest.raises(InputError, match="missing attraction-area"):
        load_schema(tmp_path / "schema.json")


# ---------------------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize(
    ("value", "strict"),
    [("  Cheap ", "cheap"), ("9:30", "09:30"), ("09:30", "09:30"), ("Acorn  Guest\tHouse", "acorn guest house"),
     ("?", ""), ("dont care", "dont care"), ("5:45pm", "5:45pm")],
)  # fmt: skip
def test_strict_normalization(value, strict):
    assert normalize_value(value) == strict


@pytest.mark.parametrize(
    ("a", "b", "slot"),
    [("guest house", "guesthouse", "hotel-type"), ("The Nirala", "nirala", "restaurant-name"),
     ("center", "centre", "hotel-area"), ("5:45pm", "17:45", "train-leaveat"),
     ("after 15:45", "15:45", "taxi-leaveat"), ("9.30 am", "09:30", "train-arriveby"),
     ("don't care", "dontcare", "hotel-area"), ("two", "2", "hotel-bookstay"), ("4 stars", "4", "hotel-stars"),
     ("free", "yes", "hotel-parking"), ("night club", "nightclub", "attraction-type"),
     ("christ's college", "christs college", "attraction-name"), ("none", "", "hotel-name"),
     ("pizza hut fen ditton", "pizza hut fenditton", "taxi-destination")],
)  # fmt: skip
def test_fuzzy_normalization_equates(a, b, slot):
    assert fuzzy_value(a, slot) == fuzzy_value(b, slot)


@pytest.mark.parametrize(
    ("a", "b", "slot"),
    [("cheap", "expensive", "hotel-pricerange"), ("free", "yes", "attraction-name"),
     ("12:00", "00:00", "train-leaveat"), ("2", "3", "hotel-bookstay"), ("dontcare", "", "hotel-area")],
)  # fmt: skip
def test_fuzzy_normalization_keeps_apart(a, b, slot):
    assert fuzzy_value(a, slot) != fuzzy_value(b, slot)


def slot_row(slot="hotel-area", answers=("north",), turn=0, dialogue="D1"):
    return {"id": f"{dialogue}/{turn}/{slot}", "dialogue_id": dialogue, "turn": turn, "domain": slot.split("-")[0],
            "slot": slot, "answers": list(answers)}  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "parsed", "exact", "fuzzy", "valid", "found", "abstained"),
    [('{"answer": "north"}', "north", 1.0, 1.0, True, True, False),
     ('```json\n{"answer": "North"}\n```', "North", 1.0, 1.0, True, True, False),
     ('The area is {"answer": "north"}.', "north", 1.0, 1.0, False, True, False),
     ('{"answer": "the north"}', "the north", 0.0, 1.0, True, True, False),
     ('{"answer": "?"}', "?", 0.0, 0.0, True, True, True),
     ("north", "", 0.0, 0.0, False, False, False)],
)  # fmt: skip
def test_score_output_slot(raw, parsed, exact, fuzzy, valid, found, abstained):
    (row,) = score_output(raw, slot_row())
    assert (row["parsed_answer"], row["exact"], row["fuzzy_exact"]) == (parsed, exact, fuzzy)
    assert (row["valid_json"], row["answer_found"], row["abstained"], row["has_answer"]) == (
        valid,
        found,
        abstained,
        True,
    )
    assert (row["dialogue_id"], row["turn"], row["slot"], row["domain"]) == ("D1", 0, "hotel-area", "hotel")


def test_unset_slot_scores():
    assert score_output('{"answer": "?"}', slot_row(answers=()))[0]["exact"] == 1.0
    assert score_output("I cannot tell.", slot_row(answers=()))[0]["exact"] == 1.0  # nothing recovered = not set
    assert score_output('{"answer": "none"}', slot_row(answers=()))[0]["exact"] == 0.0
    assert score_output('{"answer": "none"}', slot_row(answers=()))[0]["fuzzy_exact"] == 1.0
    assert score_output('{"answer": "dontcare"}', slot_row(answers=()))[0]["exact"] == 0.0
    assert score_output('{"answer": "dontcare"}', slot_row(answers=("dontcare",)))[0]["exact"] == 1.0


def hand_results() -> pd.DataFrame:
    """Two turns of dialogue D1 with all 30 slots, one turn of D2 with 2 rows (incomplete)."""
    gold = {0: {"hotel-area": "north"}, 1: {"hotel-area": "north", "hotel-stars": "4"}}
    predicted = {0: {"hotel-area": "north"}, 1: {"hotel-area": "north", "hotel-stars": "3", "taxi-leaveat": "10:00"}}
    rows = []
    for turn in (0, 1):
        for slot in SLOT_NAMES:
            g = gold[turn].get(slot)
            output = format_json_answer(predicted[turn].get(slot, "?"))
            rows += score_output(output, slot_row(slot, [g] if g else [], turn))
    rows += score_output("not json", slot_row("train-day", ["monday"], 0, "D2"))
    rows += score_output('{"answer": "?"}', slot_row("train-leaveat", [], 0, "D2"))
    for row in rows:
        row["example_id"] = f"{row['dialogue_id']}/{row['turn']}/{row['slot']}"
    return pd.DataFrame(rows)


def test_summary_by_hand():
    metrics = summarize(hand_results())
    assert (metrics["total"], metrics["examples"], metrics["turns"], metrics["complete_turns"]) == (62, 62, 3, 2)
    assert metrics["jga"] == 50.0  # turn 0 right, turn 1 wrong; D2's incomplete turn is left out
    assert metrics["jga_hotel"] == 50.0 and metrics["turns_hotel"] == 2
    assert metrics["jga_taxi"] != metrics["jga_taxi"] and metrics["turns_taxi"] == 0  # taxi never set in gold: NaN
    assert metrics["turns_train"] == 0  # D2 mentions train, but its only turn is incomplete
    # 62 rows; wrong: hotel-stars (turn 1), taxi-leaveat (turn 1), train-day (D2)
    assert metrics["slot_accuracy"] == pytest.approx(100 * 59 / 62)
    # non-empty predictions: north, north, 3, 10:00 → TP 2 of 4; gold set: north, north, 4, monday → 2 of 4
    assert (metrics["slot_precision"], metrics["slot_recall"], metrics["slot_f1"]) == (50.0, 50.0, 50.0)
    assert metrics["valid_json"] == pytest.approx(100 * 61 / 62)
    assert metrics["answer_found"] == pytest.approx(100 * 61 / 62)
    # "?" answered 29 + 27 + 1 = 57 times, each on an unset slot; unset slots: 29 + 28 + 1 = 58
    assert metrics["abstain_precision"] == 100.0
    assert metrics["abstain_recall"] == pytest.approx(100 * 57 / 58)


def test_results_round_trip_through_the_csv_pipeline(tmp_path):
    """Rows made by evaluation.results_rows, written and read back as test.py does, summarize the same."""
    from llama_squad.evaluation import results_rows, start_conversation
    from llama_squad.results import ResultsWriter, read_results, result_columns
    from llama_squad.results import summarize as summarize_results

    task = get_task("multiwoz")
    assert task is multiwoz.TASK
    dataset = build_dataset(fixture_args(granularity="domain"))
    writer = ResultsWriter(tmp_path / "results.csv", result_columns(task))
    for example in dataset["test"]:
        conversation = start_conversation(example)
        conversation.outputs.append(gold_output(example) if example["turn"] != 2 else '{"area": "east"}')
        writer.write(results_rows(task, conversation))
    results = read_results(tmp_path / "results.csv")
    assert len(results) == 3 * 30 and results["id"].is_unique
    metrics = summarize_results(results)
    assert (metrics["complete_turns"], metrics["examples"]) == (3, 15)
    assert metrics["jga"] == pytest.approx(200 / 3)  # the last turn's answers are wrong


# ---------------------------------------------------------------------------------------------------- demo


def test_demo_builds_with_the_make_demo_command(tmp_path):
    tokenizer = need(SMOLLM2, "the SmolLM2 tokenizer")
    out = tmp_path / "demo"
    argv = ["--task", "multiwoz", "--train_file", str(DEMO), "--test_file", str(DEMO), "--output_dir", str(out),
            "--tokenizer_name_or_path", str(tokenizer)]  # fmt: skip
    assert create_dataset.main(argv) == 0
    dataset = load_from_disk(str(out))
    assert len(dataset["test"]) == 19 * 30
    assert len(dataset["train"]) + len(dataset["validation"]) == 19 * 30
    assert not any(TRUNCATION_MARKER in row[-1]["content"] for row in dataset["test"]["prompt"])


def test_no_validation_dialogues_write_no_validation_split(tmp_path, caplog):
    out = tmp_path / "demo"
    argv = ["--task", "multiwoz", "--train_file", str(DEMO), "--test_file", str(DEMO), "--validation_fraction", "0",
            "--max_length", "0", "--output_dir", str(out)]  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert create_dataset.main(argv) == 0
    assert json.loads((out / "dataset_dict.json").read_text()) == {"splits": ["train", "test"]}
    assert {name: len(split) for name, split in load_from_disk(str(out)).items()} == {
        "train": 19 * 30,
        "test": 19 * 30,
    }
    assert f"{out}: no validation examples: the split is left out" in caplog.messages


@pytest.mark.slow
def test_demo_builds_with_defaults(tmp_path):
    """The Makefile's demo command (official list-file layout), with the embedded tokenizer (converted once)."""
    out = tmp_path / "demo"
    demo = DEMO.parent
    argv = [
        "--task",
        "multiwoz",
        "--data_file",
        str(DEMO),
        "--val_list",
        str(demo / "multiwoz_demo_valListFile"),
        "--test_list",
        str(demo / "multiwoz_demo_testListFile"),
        "--max_length",
        "512",
        "--output_dir",
        str(out),
    ]
    assert create_dataset.main(argv) == 0
    splits = load_from_disk(str(out))
    assert {name: len(split) for name, split in splits.items()} == {
        "train": 9 * 30,
        "validation": 3 * 30,
        "test": 7 * 30,
    }
    assert "create_dataset.py --task multiwoz --data_file data/demo/multiwoz_demo.json" in (
        (demo.parents[1] / "Makefile").read_text()
    )


@pytest.mark.parametrize("granularity", ["slot", "domain"])
def test_the_questions_of_a_turn_differ_only_after_the_dialogue(test21, granularity):
    """The answer format precedes the dialogue, the question follows it: what a turn's questions share (and test.py
    computes once, prefix sharing) is everything up to the question, whatever the granularity."""
    dataset, _ = build_split(test21[:2], make_questions(default_slots(), granularity, False), system_prompt="Be.")
    rows = [r for r in dataset if r["dialogue_id"] == test21[0].dialogue_id and r["turn"] == 1]
    assert len(rows) == {"slot": 30, "domain": 5}[granularity]
    contents = [r["prompt"][-1]["content"] for r in rows]
    shared = contents[0][: contents[0].index("\nQuestion: ")]
    assert shared.endswith(test21[0].utterances[2][1] + "\n")  # the dialogue up to the user turn asked about
    for content, row in zip(contents, rows, strict=True):
        tail = content.removeprefix(shared + "\nQuestion: " + row["question"])
        if granularity == "slot":
            assert tail == ""
        else:
            assert tail == "\nReply in the form " + json.dumps({s.split("-")[1]: "..." for s in row["slots"]})

"""Bad input data and options of create_dataset.py: one error naming the file, the record and the fix; no output.

Each case writes its input under ``tmp_path`` and runs ``create_dataset.main``: the run must exit non-zero with one
error log line (no traceback) and leave nothing behind; a bad record must also be skipped and counted with
``--skip_invalid``.
"""

import json
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO, write_squad
from datasets import load_from_disk

import create_dataset
from llama_squad.files import InputError, iter_jsonl, read_json
from llama_squad.tasks.squad_v2 import read_squad

DEMO21 = REPO / "data" / "demo" / "multiwoz_demo.json"
DEMO_TEST_LIST = REPO / "data" / "demo" / "multiwoz_demo_testListFile"
FIXTURES22 = REPO / "tests" / "fixtures" / "multiwoz22"
RECIPES = sorted(p for p in (REPO / "configs").glob("*.yaml") if "task" in yaml.safe_load(p.read_text()))

DELETE = object()  # a mutation's value that deletes the key
N_QUESTIONS = 24  # write_squad: 6 articles of 4 questions, q0 and q2 answerable ("1801" at 61 in article 1)
SQUAD_ARGS = ["--test_articles", "4:6"]


def at(*keys, value):
    """A mutation of a parsed JSON document: set ``doc[k0][k1]...[kn]`` to ``value``, or delete it."""

    def mutate(doc):
        for key in keys[:-1]:
            doc = doc[key]
        if value is DELETE:
            del doc[keys[-1]]
        else:
            doc[keys[-1]] = value

    return mutate


def qa(n, *keys, value):
    """A mutation of question ``n`` of article 1 (q0: answerable, q1: unanswerable) of the write_squad file."""
    return at("data", 1, "paragraphs", 0, "qas", n, *keys, value=value)


def squad_json(mutate):
    def build(tmp_path):
        path = write_squad(tmp_path / "squad.json")
        doc = json.loads(path.read_text())
        mutate(doc)
        path.write_text(json.dumps(doc))
        return ["--task", "squad_v2", "--train_file", str(path), *SQUAD_ARGS]

    return build


def squad_jsonl(mutate):
    """Line 5 of the JSON Lines copy (Hub layout) of the write_squad file is question a1q0, answerable."""

    def build(tmp_path):
        doc = json.loads(write_squad(tmp_path / "squad.json").read_text())
        (tmp_path / "squad.json").unlink()
        rows = []
        for article in doc["data"]:
            paragraph = article["paragraphs"][0]
            for q in paragraph["qas"]:
                answers = {"text": [a["text"] for a in q["answers"]], "answer_start": [61] * len(q["answers"])}
                rows.append({"id": q["id"], "title": article["title"], "context": paragraph["context"],
                             "question": q["question"], "answers": answers})  # fmt: skip
        mutate(rows)
        path = tmp_path / "squad.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return ["--task", "squad_v2", "--train_file", str(path), *SQUAD_ARGS]

    return build


def squad_args(*argv, train=True):
    def build(tmp_path):
        files = ["--train_file", str(write_squad(tmp_path / "squad.json"))] if train else []
        return ["--task", "squad_v2", *files, *argv]

    return build


def multiwoz21(mutate):
    """The demo data.json (6 dialogues) with DEMO0001 changed; DEMO0005-6 test, the rest train."""

    def build(tmp_path):
        doc = json.loads(DEMO21.read_text())
        mutate(doc)
        path = tmp_path / "data.json"
        path.write_text(json.dumps(doc))
        return [
            "--task",
            "multiwoz",
            "--data_file",
            str(path),
            "--test_list",
            str(DEMO_TEST_LIST),
            "--max_length",
            "0",
        ]

    return build


def multiwoz22(mutate):
    """The MultiWOZ 2.2 fixtures with the training dialogue PMUL9001 (of 2) changed."""

    def build(tmp_path):
        folder = tmp_path / "train"
        folder.mkdir()
        doc = json.loads((FIXTURES22 / "train" / "dialogues_001.json").read_text())
        mutate(doc)
        (folder / "dialogues_001.json").write_text(json.dumps(doc))
        return ["--task", "multiwoz", "--train_file", str(folder), "--validation_file", str(FIXTURES22 / "dev"),
                "--test_file", str(FIXTURES22 / "test"), "--max_length", "0"]  # fmt: skip

    return build


def config_only(tmp_path):
    return ["--config", "{tmp}/r.yaml"]


def multiwoz_args(*argv):
    return lambda tmp_path: ["--task", "multiwoz", *argv]


def write(name, content):
    """A build step that writes ``content`` (text, or bytes) to ``tmp_path / name`` (``name/`` makes a folder)."""

    def step(tmp_path):
        path = tmp_path / name
        if name.endswith("/"):
            path.mkdir(parents=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return step


def with_files(*steps, then):
    def build(tmp_path):
        for step in steps:
            step(tmp_path)
        return then(tmp_path)

    return build


@dataclass
class Case:
    id: str
    build: object  # tmp_path -> argv without --output_dir
    message: str  # in the error; {tmp} is tmp_path
    skipped: str | None = None  # with --skip_invalid: "(N kind)" of the skip log; None: not a skippable record
    kept: int | None = None  # with --skip_invalid: questions written (SQuAD), or the dialogue skipped (MultiWOZ)
    code: int = 1


A1 = "{tmp}/squad.json: article 1 ('Alder1'), paragraph 0"
Q0 = A1 + ", question 0 (id 'a1q0')"
Q1 = A1 + ", question 1 (id 'a1q1')"
LINE5 = "{tmp}/squad.jsonl: line 5 (id 'a1q0')"
BAD_MW21 = "{tmp}/data.json: dialogue 'DEMO0001': log[1] (system): metadata['hotel']['semi']: the value of 'area' is"
BAD_MW22 = "{tmp}/train/dialogues_001.json: dialogue 'PMUL9001': turn '0' (USER): the frame of service 'hotel'"

CASES = [
    # ------------------------------------------------------------------ SQuAD official JSON: structure
    Case("article-not-object", squad_json(at("data", 1, value=["Alder1"])),
         "{tmp}/squad.json: article 1: article not an object: it is a list (['Alder1'])", "1 article not an object",
         20),
    Case("title-not-string", squad_json(at("data", 1, "title", value=7)),
         "{tmp}/squad.json: article 1: title not a string: 'title' is a number (7)", "1 title not a string", 20),
    Case("paragraphs-missing", squad_json(at("data", 1, "paragraphs", value=DELETE)),
         "article 1 ('Alder1'): article without a paragraphs list: 'paragraphs' is missing",
         "1 article without a paragraphs list", 20),
    Case("paragraphs-string", squad_json(at("data", 1, "paragraphs", value="text")),
         "'paragraphs' is a string ('text')", "1 article without a paragraphs list", 20),
    Case("paragraph-is-list", squad_json(at("data", 1, "paragraphs", 0, value=["context"])),
         A1 + ": paragraph not an object: it is a list (['context'])", "1 paragraph not an object", 20),
    Case("qas-string", squad_json(at("data", 1, "paragraphs", 0, "qas", value="When?")),
         A1 + ": paragraph without a qas list: 'qas' is a string ('When?'): give a list of questions, "
         '{"id", "question", "answers"}. Fix the paragraph, or pass --skip_invalid to skip such paragraphs.',
         "1 paragraph without a qas list", 20),
    Case("qas-object", squad_json(at("data", 1, "paragraphs", 0, "qas", value={"id": "x"})),
         A1 + ": paragraph without a qas list: 'qas' is an object", "1 paragraph without a qas list", 20),
    Case("qas-missing", squad_json(at("data", 1, "paragraphs", 0, "qas", value=DELETE)),
         A1 + ": paragraph without a qas list: 'qas' is missing", "1 paragraph without a qas list", 20),
    Case("question-not-object", squad_json(qa(0, value="When?")),
         A1 + ", question 0: question not an object: it is a string ('When?')", "1 question not an object", 23),
    Case("context-number", squad_json(at("data", 1, "paragraphs", 0, "context", value=5)),
         Q0 + ": context not a string: 'context' is a number (5)", "4 context not a string", 20),
    Case("data-not-list", squad_json(at("data", value={"title": "A"})),
         "{tmp}/squad.json: not a SQuAD JSON file (expected an object with a 'data' list of articles)"),
    # ------------------------------------------------------------------ SQuAD official JSON: question fields
    Case("id-number", squad_json(qa(0, "id", value=7)),
         A1 + ", question 0 (id 7): id not a string: 'id' is a number (7): write it as a JSON string",
         "1 id not a string", 23),
    Case("id-missing", squad_json(qa(0, "id", value=DELETE)), A1 + ", question 0 (id None): no id", "1 no id", 23),
    Case("question-number", squad_json(qa(0, "question", value=42)),
         Q0 + ": question not a string: 'question' is a number (42)", "1 question not a string", 23),
    Case("question-missing", squad_json(qa(0, "question", value=DELETE)), Q0 + ": empty question", "1 empty question",
         23),
    Case("answers-string", squad_json(qa(0, "answers", value="1801")),
         Q0 + ": answers not a list: 'answers' is a string ('1801')", "1 answers not a list", 23),
    Case("answers-object", squad_json(qa(0, "answers", value={"text": ["1801"], "answer_start": [61]})),
         Q0 + ": answers not a list: 'answers' is an object", "1 answers not a list", 23),
    Case("answer-not-object", squad_json(qa(0, "answers", value=["1801"])),
         Q0 + ": answer not an object: answer 0 is a string ('1801')", "1 answer not an object", 23),
    Case("answer-text-number", squad_json(qa(0, "answers", 0, "text", value=1801)),
         Q0 + ": answer without text: answer 0: 'text' is a number (1801)", "1 answer without text", 23),
    Case("answer-start-string", squad_json(qa(0, "answers", 0, "answer_start", value="61")),
         Q0 + ": answer_start not an integer: answer 0 ('1801'): 'answer_start' is a string ('61'); give the "
         "character offset of the answer in the context as a JSON integer. Fix the question, or pass --skip_invalid "
         "to skip such questions.",
         "1 answer_start not an integer", 23),
    Case("answer-start-float", squad_json(qa(0, "answers", 0, "answer_start", value=61.0)),
         "'answer_start' is a number (61.0)", "1 answer_start not an integer", 23),
    Case("answer-start-bool", squad_json(qa(0, "answers", 0, "answer_start", value=True)),
         "'answer_start' is a boolean (True)", "1 answer_start not an integer", 23),
    Case("answer-start-null", squad_json(qa(0, "answers", 0, "answer_start", value=None)),
         "'answer_start' is null", "1 answer_start not an integer", 23),
    Case("answer-start-missing", squad_json(qa(0, "answers", 0, "answer_start", value=DELETE)),
         Q0 + ": answer_start missing: answer 0 ('1801') has no 'answer_start'", "1 answer_start missing", 23),
    Case("answer-start-negative", squad_json(qa(0, "answers", 0, "answer_start", value=-16)),
         Q0 + ": answer_start out of range: answer 0 ('1801'): answer_start -16 is outside the context (0 to 76)",
         "1 answer_start out of range", 23),
    Case("answer-start-too-large", squad_json(qa(0, "answers", 0, "answer_start", value=500)),
         "answer_start 500 is outside the context (0 to 76)", "1 answer_start out of range", 23),
    Case("answer-start-mismatch", squad_json(qa(0, "answers", 0, "answer_start", value=4)),
         Q0 + ": answer_start mismatch: answer_start 4 points at 'town', not at the answer '1801'",
         "1 answer_start mismatch", 23),
    Case("answers-missing", squad_json(qa(0, "answers", value=DELETE)),
         Q0 + ": no answers: the question has no 'answers'", "1 no answers", 23),
    Case("answers-and-flag-missing",
         squad_json(lambda d: (qa(0, "answers", value=DELETE)(d), qa(0, "is_impossible", value=DELETE)(d))),
         Q0 + ": no answers", "1 no answers", 23),
    Case("is-impossible-string", squad_json(qa(1, "is_impossible", value="true")),
         Q1 + ": is_impossible not a boolean: 'is_impossible' is a string ('true'): write true or false",
         "1 is_impossible not a boolean", 23),
    Case("answerable-without-answers", squad_json(qa(0, "answers", value=[])),
         Q0 + ": is_impossible false without answers: an answerable question needs its answers",
         "1 is_impossible false without answers", 23),
    Case("impossible-with-answers", squad_json(qa(1, "answers", value=[{"text": "1801", "answer_start": 61}])),
         Q1 + ": is_impossible with answers", "1 is_impossible with answers", 23),
    # ------------------------------------------------------------------ SQuAD JSON Lines (Hub layout)
    Case("jsonl-answers-missing", squad_jsonl(at(4, "answers", value=DELETE)),
         LINE5 + ": no answers", "1 no answers", 23),
    Case("jsonl-answers-string", squad_jsonl(at(4, "answers", value="1801")),
         LINE5 + ": answers not a list: 'answers' is a string ('1801'): give a list of", "1 answers not a list", 23),
    Case("jsonl-hub-lengths", squad_jsonl(at(4, "answers", "text", value=["1801", "1801"])),
         LINE5 + ": bad answers layout: 'answers' has 2 texts but 1 answer_start values", "1 bad answers layout", 23),
    Case("jsonl-hub-text-string", squad_jsonl(at(4, "answers", "text", value="1801")),
         LINE5 + ": bad answers layout: 'answers' is an object whose 'text' is a string ('1801')",
         "1 bad answers layout", 23),
    Case("jsonl-hub-no-answer-start", squad_jsonl(at(4, "answers", "answer_start", value=DELETE)),
         "and 'answer_start' is missing: both must be lists", "1 bad answers layout", 23),
    Case("jsonl-hub-start-strings", squad_jsonl(at(4, "answers", "answer_start", value=["61"])),
         LINE5 + ": answer_start not an integer", "1 answer_start not an integer", 23),
    Case("jsonl-answer-number", squad_jsonl(at(4, "answers", value=[5])),
         LINE5 + ": answer not an object: answer 0 is a number (5)", "1 answer not an object", 23),
    Case("jsonl-is-impossible-number", squad_jsonl(at(4, "is_impossible", value=0)),
         LINE5 + ": is_impossible not a boolean", "1 is_impossible not a boolean", 23),
    Case("jsonl-question-number", squad_jsonl(at(4, "question", value=42)),
         LINE5 + ": question not a string", "1 question not a string", 23),
    Case("jsonl-title-list", squad_jsonl(at(4, "title", value=["Alder1"])),
         LINE5 + ": title not a string: 'title' is a list", "1 title not a string", 23),
    Case("jsonl-line-is-list", squad_jsonl(at(4, value=["a1q0"])),
         "{tmp}/squad.jsonl: line 5 holds a list, not a JSON object"),
    # ------------------------------------------------------------------ input files
    Case("train-file-folder", with_files(write("data.json/", ""), then=squad_args("--train_file", "{tmp}/data.json",
         "--test_articles", "0:1", train=False)), "{tmp}/data.json: is a folder, not a file"),
    Case("train-file-missing", squad_args("--train_file", "{tmp}/nope.json", "--test_articles", "0:1", train=False),
         "{tmp}/nope.json: no such file"),
    Case("test-file-missing", squad_args("--test_file", "{tmp}/nope.json"), "{tmp}/nope.json: no such file"),
    Case("json-not-utf8", with_files(write("latin1.json", b'{"data": [{"title": "caf\xe9"}]}'),
         then=squad_args("--train_file", "{tmp}/latin1.json", "--test_articles", "0:1", train=False)),
         "{tmp}/latin1.json: not UTF-8 text"),
    Case("jsonl-folder", with_files(write("rows.jsonl/", ""), then=squad_args("--train_file", "{tmp}/rows.jsonl",
         "--test_articles", "0:1", train=False)), "{tmp}/rows.jsonl: is a folder, not a file"),
    Case("jsonl-missing", squad_args("--train_file", "{tmp}/rows.jsonl", "--test_articles", "0:1", train=False),
         "{tmp}/rows.jsonl: no such file"),
    Case("jsonl-not-utf8", with_files(write("rows.jsonl", b'{"id": "a", "title": "caf\xe9"}\n'),
         then=squad_args("--train_file", "{tmp}/rows.jsonl", "--test_articles", "0:1", train=False)),
         "{tmp}/rows.jsonl: not UTF-8 text ('utf-8' codec can't decode byte 0xe9 in position 25"),
    Case("duplicate-id-across-files", with_files(lambda t: write_squad(t / "test.json"),
         then=squad_args("--test_file", "{tmp}/test.json")),
         "{tmp}/test.json: article 0 ('Alder0'), paragraph 0, question 0 (id 'a0q0'): duplicate id"),
    # ------------------------------------------------------------------ SQuAD options (checked before reading)
    Case("max-train-questions-zero", squad_args("--test_file", "{tmp}/unread.json", "--max_train_questions", "0"),
         "--max_train_questions 0: give a positive number"),
    Case("max-train-questions-negative", squad_args(*SQUAD_ARGS, "--max_train_questions", "-3"),
         "--max_train_questions -3: give a positive number"),
    Case("validation-fraction-one", squad_args("--test_file", "{tmp}/unread.json", "--validation_fraction", "1"),
         "--validation_fraction 1.0: must be in [0, 1)"),
    Case("validation-fraction-negative", squad_args(*SQUAD_ARGS, "--validation_fraction", "-0.1"),
         "--validation_fraction -0.1: must be in [0, 1)"),
    Case("test-articles-not-a-slice", squad_args("--test_articles", "abc"),
         "--test_articles 'abc': expected START:END, e.g. 25:35"),
    Case("test-articles-one-number", squad_args("--test_articles", "25"), "--test_articles '25': expected START:END"),
    Case("test-articles-empty", squad_args("--test_articles", "5:2"),
         "--test_articles 5:2: selects no article (START must be below END)"),
    Case("test-articles-beyond", squad_args("--test_articles", "10:20"),
         "--test_articles 10:20: selects no article with valid questions of {tmp}/squad.json"),
    Case("test-articles-all", squad_args("--test_articles", "0:"),
         "no training questions are left after carving out the test articles"),
    Case("test-articles-and-test-file", squad_args("--test_articles", "4:6", "--test_file", "{tmp}/squad.json"),
         "give either --test_file or --test_articles, not both"),
    Case("hub-and-train-file", squad_args("--test_articles", "4:6", "--hub_dataset", "rajpurkar/squad_v2"),
         "give either --hub_dataset or --train_file/--test_file, not both; --test_articles carves the test split"),
    Case("hub-offline", squad_args("--hub_dataset", "no-such-user/no-such-dataset", train=False),
         "--hub_dataset no-such-user/no-such-dataset: cannot load its 'train' split"),
    Case("test-file-only", squad_args("--test_file", "{tmp}/squad.json", train=False),
         "no training questions: pass --train_file"),
    Case("no-input", squad_args(train=False), "no input: pass --train_file"),
    Case("no-test", squad_args(), "no test questions: pass --test_file, or carve them out with --test_articles"),
    Case("every-bad-option-at-once", squad_args("--max_train_questions", "0", "--validation_fraction", "2",
         "--test_articles", "x"), "--validation_fraction 2.0: must be in [0, 1), e.g. 0.05 (0: no validation split); "
         "--max_train_questions 0: give a positive number, or leave it out for all; --test_articles 'x': expected"),
    Case("prompt-unknown", squad_args(*SQUAD_ARGS, "--prompt", "chat"), "argument --prompt: invalid choice", code=2),
    Case("validation-fraction-text", squad_args(*SQUAD_ARGS, "--validation_fraction", "a lot"),
         "invalid float value: 'a lot'", code=2),
    Case("task-unknown", squad_args(*SQUAD_ARGS, "--task", "squad"), "argument --task: invalid choice", code=2),
    Case("no-task", lambda tmp_path: ["--train_file", "x.json"], "--task is required", code=2),
    # ------------------------------------------------------------------ --config recipes
    Case("config-missing", squad_args(*SQUAD_ARGS, "--config", "{tmp}/nope.yaml"),
         "--config {tmp}/nope.yaml: no such file (the shipped recipes are in configs/)"),
    Case("config-folder", with_files(write("recipe/", ""), then=squad_args(*SQUAD_ARGS, "--config", "{tmp}/recipe")),
         "--config {tmp}/recipe: a folder, not a YAML recipe file"),
    Case("config-malformed", with_files(write("r.yaml", "task: squad_v2\nprompt: [single_turn\n"),
         then=squad_args(*SQUAD_ARGS, "--config", "{tmp}/r.yaml")), "--config {tmp}/r.yaml: not valid YAML at line"),
    Case("config-a-list", with_files(write("r.yaml", "- task: squad_v2\n"), then=config_only),
         "--config {tmp}/r.yaml: holds a YAML list, not a mapping of option: value"),
    Case("config-empty", with_files(write("r.yaml", "# nothing yet\n"),
         then=squad_args(*SQUAD_ARGS, "--config", "{tmp}/r.yaml")), "--config {tmp}/r.yaml: holds nothing, not a"),
    Case("config-task-unknown", with_files(write("r.yaml", "task: squad\n"), then=config_only),
         "--config {tmp}/r.yaml: task 'squad': choose one of squad_v2, multiwoz"),
    Case("config-no-task", with_files(write("r.yaml", "prompt: single_turn\n"),
         then=lambda t: ["--config", "{tmp}/r.yaml", "--output_dir", "x"]), "--task is required", code=2),
    Case("config-value-a-list", with_files(write("r.yaml", "task: squad_v2\nvalidation_fraction: [0.1]\n"),
         then=squad_args(*SQUAD_ARGS, "--config", "{tmp}/r.yaml")), "--validation_fraction [0.1]: expected a number"),
    Case("config-value-bool", with_files(write("r.yaml", "task: squad_v2\nmax_train_questions: true\n"),
         then=squad_args(*SQUAD_ARGS, "--config", "{tmp}/r.yaml")),
         "--max_train_questions True: expected an integer or null"),
    Case("config-unknown-key", with_files(write("r.yaml", "task: squad_v2\nlearning_rate: 0.1\n"),
         then=squad_args(*SQUAD_ARGS, "--config", "{tmp}/r.yaml")), "r.yaml: unknown key 'learning_rate'", code=2),
    # ------------------------------------------------------------------ MultiWOZ options
    Case("mw-max-dialogues-zero", multiwoz_args("--train_file", "x", "--test_file", "y", "--max_dialogues_per_split",
         "0"), "--max_dialogues_per_split 0: give a positive number"),
    Case("mw-keep-empty-fraction", multiwoz_args("--train_file", "x", "--test_file", "y", "--keep_empty_fraction",
         "1.5"), "--keep_empty_fraction 1.5: must be in [0, 1]"),
    Case("mw-max-length-negative", multiwoz_args("--train_file", "x", "--test_file", "y", "--max_length", "-1"),
         "--max_length -1: give a token budget"),
    Case("mw-validation-fraction", multiwoz_args("--train_file", "x", "--test_file", "y", "--validation_fraction",
         "1"), "--validation_fraction 1.0: must be in [0, 1)"),
    Case("mw-granularity", multiwoz_args("--train_file", "x", "--test_file", "y", "--granularity", "turn"),
         "argument --granularity: invalid choice", code=2),
    Case("mw-val-list-without-data-file", multiwoz_args("--train_file", "x", "--test_file", "y", "--val_list", "z"),
         "--val_list picks dialogues out of --data_file: pass --data_file too"),
    Case("mw-test-list-without-data-file", multiwoz_args("--train_file", "x", "--test_list", "z"),
         "--test_list picks dialogues out of --data_file: pass --data_file too, or give the test dialogues as a file; "
         "no test dialogues: pass --test_file"),
    Case("mw-data-file-without-test-list", multiwoz_args("--data_file", "x"), "--data_file needs --test_list"),
    Case("mw-data-file-and-train-file", multiwoz_args("--data_file", "x", "--test_list", "y", "--train_file", "z"),
         "give either --data_file (with --val_list/--test_list) or --train_file/--test_file"),
    Case("mw-test-file-only", multiwoz_args("--test_file", "y"), "no training dialogues: pass --train_file"),
    Case("mw-no-input", multiwoz_args(), "no input: pass --train_file and --test_file"),
    Case("mw-train-file-missing", multiwoz_args("--train_file", "{tmp}/nope.json", "--test_file", str(DEMO21),
         "--max_length", "0"), "{tmp}/nope.json: no such file or folder"),
    Case("mw-schema-folder", with_files(write("schema.json/", ""), then=multiwoz_args("--train_file", str(DEMO21),
         "--test_file", str(DEMO21), "--schema_file", "{tmp}/schema.json")), "{tmp}/schema.json: is a folder"),
    Case("mw-schema-values-string", with_files(write("schema.json", json.dumps([{"slots": [{"name": "hotel-area",
         "is_categorical": True, "possible_values": "east"}]}])), then=multiwoz_args("--train_file", str(DEMO21),
         "--test_file", str(DEMO21), "--schema_file", "{tmp}/schema.json")),
         "{tmp}/schema.json: slot 'hotel-area': 'possible_values' is a string ('east'), not a list of strings; pass"),
    Case("mw-schema-slots-number", with_files(write("schema.json", '[{"service_name": "hotel", "slots": 3}]'),
         then=multiwoz_args("--train_file", str(DEMO21), "--test_file", str(DEMO21), "--schema_file",
         "{tmp}/schema.json")), "{tmp}/schema.json: not a MultiWOZ 2.2 schema.json with the tracked slots"),
    Case("mw-val-list-missing", multiwoz_args("--data_file", str(DEMO21), "--test_list", str(DEMO_TEST_LIST),
         "--val_list", "{tmp}/valListFile", "--max_length", "0"), "{tmp}/valListFile: no such list file"),
    Case("mw-val-list-folder", with_files(write("lists/", ""), then=multiwoz_args("--data_file", str(DEMO21),
         "--test_list", str(DEMO_TEST_LIST), "--val_list", "{tmp}/lists", "--max_length", "0")),
         "{tmp}/lists: a folder, not a list file"),
    Case("mw-val-list-not-utf8", with_files(write("valListFile", b"DEMO0002\xff\n"), then=multiwoz_args(
         "--data_file", str(DEMO21), "--test_list", str(DEMO_TEST_LIST), "--val_list", "{tmp}/valListFile",
         "--max_length", "0")), "{tmp}/valListFile: cannot read the list file ('utf-8' codec can't decode"),
    Case("mw-tokenizer-missing", multiwoz_args("--train_file", str(DEMO21), "--test_file", str(DEMO21),
         "--tokenizer_name_or_path", "{tmp}/no-tokenizer"),
         "--tokenizer_name_or_path {tmp}/no-tokenizer: no such folder; pass a tokenizer folder"),
    Case("mw-tokenizer-empty-folder", with_files(write("tok/", ""), then=multiwoz_args("--train_file", str(DEMO21),
         "--test_file", str(DEMO21), "--tokenizer_name_or_path", "{tmp}/tok")),
         "--tokenizer_name_or_path '{tmp}/tok': cannot load a tokenizer ("),
    Case("mw-zip-not-utf8", with_files(lambda t: zipfile.ZipFile(t / "val.json.zip", "w").writestr("val.json",
         b'{"caf\xe9": {}}'), then=multiwoz_args("--train_file", "{tmp}/val.json.zip", "--test_file", str(DEMO21),
         "--max_length", "0")), "{tmp}/val.json.zip (val.json): not UTF-8 text"),
    # ------------------------------------------------------------------ MultiWOZ dialogues
    Case("mw21-value-number", multiwoz21(at("DEMO0001.json", "log", 1, "metadata", "hotel", "semi", "area", value=3)),
         BAD_MW21 + " a number (3): a slot's value is a string", "DEMO0001"),
    Case("mw21-value-null", multiwoz21(at("DEMO0001.json", "log", 1, "metadata", "hotel", "semi", "area",
         value=None)), BAD_MW21 + " null", "DEMO0001"),
    Case("mw21-value-object", multiwoz21(at("DEMO0001.json", "log", 1, "metadata", "hotel", "semi", "area",
         value={"east": 1})), BAD_MW21 + " an object ({'east': 1})", "DEMO0001"),
    Case("mw21-text-number", multiwoz21(at("DEMO0001.json", "log", 0, "text", value=7)),
         "{tmp}/data.json: dialogue 'DEMO0001': log[0] (user) has no 'text' string", "DEMO0001"),
    Case("mw21-log-object", multiwoz21(at("DEMO0001.json", "log", value={"0": {}})),
         "{tmp}/data.json: dialogue 'DEMO0001': has no 'log' list", "DEMO0001"),
    Case("mw21-not-dialogues", multiwoz21(lambda doc: doc.clear()), "{tmp}/data.json: holds no valid dialogues"),
    Case("mw22-values-numbers", multiwoz22(at(0, "turns", 0, "frames", 3, "state", "slot_values",
         value={"hotel-stars": [4]})), BAD_MW22 + ": the value of 'hotel-stars' is a list ([4])", "PMUL9001"),
    Case("mw22-frames-object", multiwoz22(at(0, "turns", 0, "frames", value={"service": "hotel"})),
         "{tmp}/train/dialogues_001.json: dialogue 'PMUL9001': turn '0' (USER) has no 'frames' list", "PMUL9001"),
]  # fmt: skip


def run_main(argv: list[str]) -> int:
    try:
        return create_dataset.main(argv)
    except SystemExit as e:  # argparse errors
        return e.code


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_and_writes_nothing(case, tmp_path, caplog, capsys):
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in case.build(tmp_path)]
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        code = run_main([*argv, "--output_dir", str(out)])
    message = case.message.replace("{tmp}", str(tmp_path))
    assert code == case.code
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no leftovers
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    if case.code == 1:
        assert [r.exc_info for r in errors] == [None]  # one error line, no traceback
        assert message in errors[0].getMessage()
        assert "\n" not in errors[0].getMessage()
    else:
        assert errors == []
        assert message in capsys.readouterr().err


SKIPPABLE = [c for c in CASES if c.skipped]


@pytest.mark.parametrize("case", SKIPPABLE, ids=[c.id for c in SKIPPABLE])
def test_skip_invalid_skips_and_counts_the_bad_record(case, tmp_path, caplog):
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in case.build(tmp_path)]
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert run_main([*argv, "--output_dir", str(out), "--skip_invalid"]) == 0
    dataset = load_from_disk(str(out))
    if "squad_v2" in argv:
        count = case.skipped.split(" ", 1)[0]  # questions, or the paragraph or article that held them
        assert (
            f"squad.json{'l' if 'jsonl' in case.id else ''}: skipped {count} invalid records ({case.skipped})"
            in caplog.text
        )
        assert sum(len(split) for split in dataset.values()) == case.kept
        assert set(dataset["test"]["title"]) == {"Alder4", "Alder5"}  # article numbers stay the file's
    else:
        assert "skipped 1 invalid dialogues; the first: " in caplog.text
        dialogues = {d for split in dataset.values() for d in split["dialogue_id"]}
        assert case.kept not in dialogues and dialogues


def test_output_dir_that_exists_fails_before_reading_and_is_kept(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    argv = ["--task", "squad_v2", "--train_file", str(tmp_path / "unread.json"), "--test_articles", "0:1"]
    assert create_dataset.main([*argv, "--output_dir", str(out)]) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"{out} already exists: pass --overwrite to replace it, or choose another path"
    ]
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and sorted(os.listdir(tmp_path)) == ["out"]


def test_output_dir_under_a_file_is_an_error(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    argv = ["--task", "squad_v2", "--train_file", str(write_squad(tmp_path / "s.json")), "--test_articles", "4:6"]
    assert create_dataset.main([*argv, "--output_dir", str(tmp_path / "file" / "out")]) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"--output_dir {tmp_path}/file/out: {tmp_path}/file is a file, not a folder; choose another --output_dir"
    ]
    assert sorted(os.listdir(tmp_path)) == ["file", "s.json"]


def test_unanswerable_question_may_leave_out_answers(tmp_path):
    build = squad_json(lambda d: (qa(1, "answers", value=DELETE)(d), qa(3, "is_impossible", value=DELETE)(d)))
    path = Path(build(tmp_path)[3])
    records = {r.id: r for r in read_squad(path)}
    assert len(records) == N_QUESTIONS
    assert records["a1q1"].answers == () and records["a1q3"].answers == ()  # no answers + is_impossible; answers []


@pytest.mark.parametrize("argv", [["--task", "squad_v2", "--train_file", "{tmp}/data.json", "--test_articles", "0:1"],
                                  ["--config", "{tmp}/nope.yaml"]], ids=["folder", "missing-config"])  # fmt: skip
def test_command_line_error_has_no_traceback(argv, tmp_path):
    (tmp_path / "data.json").mkdir()
    argv = [a.format(tmp=tmp_path) for a in argv]
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "create_dataset.py"), *argv, "--output_dir", str(out)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert f"create_dataset: {tmp_path}/data.json: is a folder" in error or f"--config {tmp_path}/nope.yaml" in error
    assert not out.exists()


@pytest.mark.parametrize("reader", [read_json, lambda p: list(iter_jsonl(p))], ids=["read_json", "iter_jsonl"])
def test_unreadable_file_is_an_input_error(reader, tmp_path, monkeypatch):
    path = tmp_path / "data.json"
    path.write_text("{}")

    def denied(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr("llama_squad.files.open", denied, raising=False)  # root reads a chmod 000 file anyway
    with pytest.raises(InputError, match=rf"^{path}: permission denied; make the file readable"):
        reader(path)


# ---------------------------------------------------------------------------------------------------- good input


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_dataset_recipe_builds(recipe, tmp_path):
    train = write_squad(tmp_path / "train.json")
    test = tmp_path / "test.json"
    test.write_text(train.read_text().replace('"id": "a', '"id": "test-a'))
    out = tmp_path / "out"
    argv = ["--config", str(recipe), "--train_file", str(train), "--test_file", str(test), "--output_dir", str(out)]
    assert create_dataset.main(argv) == 0
    dataset = load_from_disk(str(out))
    settings = yaml.safe_load(recipe.read_text())
    assert sum(len(split) for split in dataset.values()) == 2 * N_QUESTIONS
    assert {split["task"][0] for split in dataset.values()} == {settings["task"]}
    assert dataset["train"][0]["prompt"][0] == {"role": "system", "content": settings["system_prompt"]}


def test_command_line_task_wins_over_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: multiwoz\n")
    argv = ["--config", str(recipe), "--task", "squad_v2", "--train_file", str(write_squad(tmp_path / "s.json")),
            "--test_articles", "4:6", "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert create_dataset.main(argv) == 0
    assert set(load_from_disk(str(tmp_path / "out"))["test"]["task"]) == {"squad_v2"}


def test_real_dev_set_reads_with_no_skip(squad_dev, caplog):
    with caplog.at_level(logging.WARNING):
        records = read_squad(squad_dev)
    assert len(records) == 11873
    assert sum(bool(r.answers) for r in records) == 5928
    assert caplog.records == []


def test_real_dev_set_jsonl_copy_reads_with_no_skip(squad_dev, tmp_path):
    rows = [
        {"id": q["id"], "title": a["title"], "context": p["context"], "question": q["question"],
         "answers": {"text": [x["text"] for x in q["answers"]],
                     "answer_start": [x["answer_start"] for x in q["answers"]]}}
        for a in json.loads(squad_dev.read_text())["data"] for p in a["paragraphs"] for q in p["qas"]
    ]  # fmt: skip
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_squad(path) == read_squad(squad_dev)

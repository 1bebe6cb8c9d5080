"""Official SQuAD v2 scoring: hand-computed values, the official numbers on real predictions, and the CLI."""

import json
import logging
from pathlib import Path

import pytest

from llama_squad.files import InputError
from llama_squad.tasks.squad_v2.official import (
    MissingNaProbsError,
    MissingPredictionsError,
    compute_exact,
    compute_f1,
    evaluate,
    get_tokens,
    gold_answers,
    main,
    normalize_answer,
    score_prediction,
    score_predictions,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OFFICIAL_KEYS = [
    "exact",
    "f1",
    "total",
    "HasAns_exact",
    "HasAns_f1",
    "HasAns_total",
    "NoAns_exact",
    "NoAns_f1",
    "NoAns_total",
]


def squad_v2_dir() -> Path:
    """``../shared/data/squad_v2``, or skip the test saying why."""
    folder = SHARED_DATA / "squad_v2"
    if not (folder / "dev-v2.0.json").exists():
        pytest.skip(
            "../shared/data/squad_v2 not found: real-data tests need the shared data folder beside the checkout"
        )
    return folder


# ---------------------------------------------------------------------------------------------------- one answer


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Cat!", "cat"),
        ("  A  man, a plan,\ta canal:\nPanama ", "man plan canal panama"),
        ("an apple", "apple"),
        ("Theater and Anna", "theater and anna"),  # articles only as whole words
        ("the-end", "theend"),  # punctuation goes first, so no article is left
        ("A. Lincoln", "lincoln"),
        ("(the) [a] {an}", ""),
        ("it's 1,000.5$", "its 10005"),
        ("Ça va? ÉTÉ", "ça va été"),
        ("naïve — café", "naïve — café"),  # only ASCII punctuation is removed
        ("", ""),
        ("The", ""),
    ],
)
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_get_tokens():
    assert get_tokens("The quick, brown fox.") == ["quick", "brown", "fox"]
    assert get_tokens("") == []
    assert get_tokens("the a an") == []


@pytest.mark.parametrize(
    ("gold", "pred", "exact", "f1"),
    [
        ("Denver Broncos", "the denver broncos!", 1, 1.0),
        ("Denver Broncos won the game", "Broncos", 0, 0.4),  # p = 1/1, r = 1/4: 2pr/(p+r) = 2/5
        ("cat cat dog bird", "cat cat cat fish", 0, 0.5),  # multiset overlap: cat twice, p = r = 2/4
        ("red blue", "blue green yellow orange", 0, 1 / 3),  # p = 1/4, r = 1/2: 2pr/(p+r) = 1/3
        ("Paris", "London", 0, 0),
        ("Paris", "", 0, 0),
        ("", "Paris", 0, 0),
        ("", "", 1, 1),
        ("", "the", 1, 1),  # both normalize to no tokens
    ],
)
def test_compute_exact_and_f1(gold, pred, exact, f1):
    assert compute_exact(gold, pred) == exact
    assert compute_f1(gold, pred) == f1


def test_gold_answers_rule():
    assert gold_answers(["The", "a", "Paris", "paris"]) == ["Paris", "paris"]
    assert gold_answers(["the", "!"]) == [""]  # nothing left after normalization: unanswerable
    assert gold_answers([]) == [""]


@pytest.mark.parametrize(
    ("prediction", "golds", "scores"),
    [
        ("", [], (1.0, 1.0)),
        ("  ", [], (1.0, 1.0)),
        ("Paris", [], (0.0, 0.0)),
        ("the", ["an"], (1.0, 1.0)),  # the gold normalizes to nothing: only an empty prediction is right
        ("Paris", ["an"], (0.0, 0.0)),
        ("", ["Paris"], (0.0, 0.0)),
        ("Broncos", ["Denver Broncos won the game", "Broncos"], (1.0, 1.0)),
        ("Broncos", ["Denver Broncos won the game", "Broncos team"], (0.0, 2 / 3)),  # best of 2/5 and 2/3
        ("blue green yellow orange", ["red blue", "the"], (0.0, 1 / 3)),
    ],
)
def test_score_prediction_takes_the_best_gold(prediction, golds, scores):
    assert score_prediction(prediction, golds) == pytest.approx(scores, abs=1e-15)
    assert all(isinstance(s, float) for s in score_prediction(prediction, golds))


def test_score_predictions_matches_the_plain_definitions():
    predictions = ["Denver", "the Broncos", "", "x", "cat cat fish", "Paris."]
    gold_lists = [
        ["Denver Broncos"],
        ["Denver Broncos", "Broncos"],
        [],
        ["the"],
        ["cat cat dog bird", "cat"],
        ["Paris"],
    ]
    exact, f1 = score_predictions(predictions, gold_lists)
    for p, golds, e, f in zip(predictions, gold_lists, exact, f1, strict=True):
        golds = gold_answers(golds)
        assert e == max(compute_exact(g, p) for g in golds)
        assert f == max(compute_f1(g, p) for g in golds)
    assert exact == [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="2 predictions but 1 lists of gold answers"):
        score_predictions(["a", "b"], [["a"]])


# ---------------------------------------------------------------------------------------------------- a dataset


def squad_data(questions: list[tuple[str, list[str]]]) -> list:
    """The official ``data`` list holding ``questions``: (id, gold answer texts) in one paragraph."""
    qas = [
        {
            "id": qid,
            "question": "?",
            "answers": [{"text": t, "answer_start": 0} for t in answers],
            "is_impossible": not answers,
        }
        for qid, answers in questions
    ]
    return [{"title": "T", "paragraphs": [{"context": "c", "qas": qas}]}]


# q1: f1 2/5, q2: exact, q3: right abstention, q4: wrong answer to an unanswerable question
DATA = squad_data([("q1", ["Denver Broncos won the game"]), ("q2", ["Paris", "paris"]), ("q3", []), ("q4", [])])
PREDICTIONS = {"q1": "Denver", "q2": "Paris.", "q3": "", "q4": "London"}
NA_PROBS = {"q2": 0.1, "q1": 0.2, "q4": 0.7, "q3": 0.8}


def test_evaluate_hand_computed():
    result = evaluate(DATA, PREDICTIONS)
    assert list(result) == OFFICIAL_KEYS
    assert result == pytest.approx(
        {
            "exact": 50.0,  # (0 + 1 + 1 + 0) / 4
            "f1": 60.0,  # (0.4 + 1 + 1 + 0) / 4
            "total": 4,
            "HasAns_exact": 50.0,
            "HasAns_f1": 70.0,  # (0.4 + 1) / 2
            "HasAns_total": 2,
            "NoAns_exact": 50.0,
            "NoAns_f1": 50.0,
            "NoAns_total": 2,
        },
        abs=1e-12,
    )


def test_evaluate_with_no_answer_probabilities():
    result = evaluate(DATA, PREDICTIONS, na_probs=NA_PROBS, na_prob_thresh=0.5)
    assert list(result) == OFFICIAL_KEYS + ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]
    # q4 (0.7) and q3 (0.8) are above the threshold: scored as "no answer", right for both
    assert result == pytest.approx(
        {
            "exact": 75.0,
            "f1": 85.0,  # (0.4 + 1 + 1 + 1) / 4
            "total": 4,
            "HasAns_exact": 50.0,
            "HasAns_f1": 70.0,
            "HasAns_total": 2,
            "NoAns_exact": 100.0,
            "NoAns_f1": 100.0,
            "NoAns_total": 2,
            # abstain everywhere: 2 right; then answer in order of probability: q2 +1 = 3 (thresh 0.1),
            # q1 +0 (exact) / +0.4 (f1) = 3 / 3.4 (thresh 0.2), q4 -1, q3 +0
            "best_exact": 75.0,
            "best_exact_thresh": 0.1,
            "best_f1": 85.0,
            "best_f1_thresh": 0.2,
        },
        abs=1e-12,
    )
    # only a probability above the threshold counts: q4 (0.7) is still scored as answered
    assert evaluate(DATA, PREDICTIONS, na_probs=NA_PROBS, na_prob_thresh=0.7)["exact"] == 50.0
    # the default threshold 1.0 changes nothing
    plain = evaluate(DATA, PREDICTIONS, na_probs=NA_PROBS)
    assert {k: plain[k] for k in OFFICIAL_KEYS} == evaluate(DATA, PREDICTIONS)


def test_gold_that_normalizes_to_nothing_follows_the_official_rules():
    data = squad_data([("q", ["The"])])  # has an answer (HasAns), but it scores like an unanswerable question
    assert evaluate(data, {"q": ""}) == {
        "exact": 100.0,
        "f1": 100.0,
        "total": 1,
        "HasAns_exact": 100.0,
        "HasAns_f1": 100.0,
        "HasAns_total": 1,
    }
    # above the no-answer threshold a question with answers scores 0, whatever they normalize to
    assert evaluate(data, {"q": ""}, na_probs={"q": 0.9}, na_prob_thresh=0.5)["exact"] == 0.0


def test_missing_predictions_are_an_error_naming_them():
    ids = [f"q{i:02d}" for i in range(14)]
    data = squad_data([(qid, ["Paris"]) for qid in ids])
    with pytest.raises(MissingPredictionsError) as error:
        evaluate(data, {"q00": "Paris"})
    message = str(error.value)
    assert message.startswith(
        "13 of 14 questions have no prediction (ids: q01, q02, q03, q04, q05, q06, q07, q08, q09, q10, ..."
    )
    assert "(3 more)" in message and "q11" not in message and "--allow_missing" in message
    assert error.value.missing == ids[1:]
    assert isinstance(error.value, ValueError)


def test_allow_missing_scores_them_empty(caplog):
    predictions = {"q1": "Denver", "q2": "Paris.", "extra": "x"}
    with caplog.at_level(logging.WARNING, logger="llama_squad.tasks.squad_v2.official"):
        result = evaluate(DATA, predictions, allow_missing=True)
    assert result == evaluate(DATA, {**predictions, "q3": "", "q4": ""})
    assert result["exact"] == 75.0
    assert "2 of 4 questions have no prediction: scored as empty answers" in caplog.text
    assert "1 predictions are for ids not in the dataset: ignored" in caplog.text


@pytest.mark.parametrize(
    ("dataset", "predictions", "na_probs", "error", "message"),
    [
        ({"data": []}, {}, None, InputError, "expected the 'data' list of articles, found an object"),
        ([{"title": "T"}], {}, None, InputError, "article 0 has no 'paragraphs' list"),
        (
            squad_data([("q1", ["x"])]),
            {"q1": 3},
            None,
            InputError,
            "the prediction for id 'q1' is a number, not a string",
        ),
        (squad_data([("q1", ["x"])]), ["x"], None, InputError, "found an array"),
        (
            squad_data([("q1", ["x"])]),
            {"q1": "x"},
            {"q1": "high"},
            InputError,
            "for id 'q1' is a string, not a number",
        ),
        (squad_data([("q1", ["x"])]), {"q1": "x"}, {}, MissingNaProbsError, "1 of 1 questions have no no-answer prob"),
    ],
)
def test_evaluate_rejects_bad_input(dataset, predictions, na_probs, error, message):
    with pytest.raises(error, match=message):
        evaluate(dataset, predictions, na_probs=na_probs)


@pytest.mark.parametrize(
    ("prob", "shown"),
    [
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (-0.25, "-0.25"),
        (1.5, "1.5"),
        (2, "2"),
    ],
)
def test_evaluate_rejects_no_answer_probabilities_outside_0_1(prob, shown):
    na_probs = {**NA_PROBS, "q4": prob}
    with pytest.raises(InputError) as error:
        evaluate(DATA, PREDICTIONS, na_probs=na_probs)
    assert str(error.value) == (
        f"the no-answer probability for id 'q4' is {shown}, not a number in [0, 1]: "
        "give every question a probability between 0 and 1"
    )
    # the bounds themselves are probabilities
    result = evaluate(DATA, PREDICTIONS, na_probs={**NA_PROBS, "q2": 0, "q3": 1.0})
    assert result["best_exact"] == 75.0 and result["best_exact_thresh"] == 0


# ---------------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def official():
    """(dev data list, {scenario: predictions}, {scenario: expected scores}) of the shared SQuAD v2 folder."""
    folder = squad_v2_dir()
    data = json.loads((folder / "dev-v2.0.json").read_text(encoding="utf-8"))["data"]
    qas = [qa for article in data for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    scenarios = {
        "bidaf_sa_elmo_allenai": json.loads((folder / "predictions" / "bidaf_sa_elmo_allenai.json").read_text()),
        "all_empty": {qa["id"]: "" for qa in qas},
        "first_gold": {qa["id"]: qa["answers"][0]["text"] if qa["answers"] else "" for qa in qas},
    }
    expected = json.loads((folder / "predictions" / "expected_scores.json").read_text())
    return data, scenarios, expected


SCENARIOS = ["bidaf_sa_elmo_allenai", "all_empty", "first_gold"]


def assert_official(result: dict, expected: dict) -> None:
    assert list(result) == list(expected)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=0, abs=1e-9), key


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_official_scores_on_real_predictions(official, scenario):
    data, scenarios, expected = official
    assert_official(evaluate(data, scenarios[scenario]), expected[scenario])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_cli_reproduces_the_official_scores(official, scenario, tmp_path, capsys):
    data, scenarios, expected = official
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(scenarios[scenario]))
    out = tmp_path / "scores.json"
    assert main([str(squad_v2_dir() / "dev-v2.0.json"), str(predictions), "--out_file", str(out)]) == 0
    printed = capsys.readouterr().out
    assert_official(json.loads(printed), expected[scenario])
    assert json.loads(out.read_text()) == json.loads(printed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.json", "scores.json"]  # no temporary left


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def files(tmp_path):
    """A small dataset file and a complete predictions file."""
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"version": "v2.0", "data": DATA}))
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(PREDICTIONS))
    return data, predictions


def test_cli_official_option_spellings(files, tmp_path, capsys):
    data, predictions = files
    na_probs = tmp_path / "na_probs.json"
    na_probs.write_text(json.dumps(NA_PROBS))
    out = tmp_path / "out.json"
    assert main([str(data), str(predictions), "-o", str(out), "-n", str(na_probs), "-t", "0.5"]) == 0
    capsys.readouterr()
    expected = evaluate(DATA, PREDICTIONS, na_probs=NA_PROBS, na_prob_thresh=0.5)
    assert json.loads(out.read_text()) == expected
    argv = [
        str(data),
        str(predictions),
        "--out-file",
        str(out),
        "--na-prob-file",
        str(na_probs),
        "--na-prob-thresh",
        "0.5",
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == expected


def test_cli_missing_predictions(files, capsys):
    data, predictions = files
    predictions.write_text(json.dumps({"q1": "Denver", "q2": "Paris."}))
    assert main([str(data), str(predictions)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"squad_eval: error: {predictions}: 2 of 4 questions have no prediction (ids: q3, q4); "
        "pass --allow_missing (allow_missing=True) to score them as empty answers\n"
    )
    assert main([str(data), str(predictions), "--allow_missing"]) == 0
    assert json.loads(capsys.readouterr().out)["exact"] == 75.0


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("predictions", '{"q1": "Denver", "q2": ', "not valid JSON (Expecting value at line 1, column 24)"),
        ("predictions", "", "not valid JSON (Expecting value at line 1, column 1)"),
        (
            "predictions",
            '{"q1": "a",\n "q2": "b"\n "q3": "c"}',
            "not valid JSON (Expecting ',' delimiter at line 3, column 2)",
        ),
        ("predictions", '["Denver"]', "expected a JSON object mapping question ids to answer strings, found an array"),
        ("predictions", '{"q1": "Denver", "q2": null}', "the prediction for id 'q2' is null, not a string"),
        ("predictions", b"\xff\xfe{}", "not UTF-8 text"),
        ("data", '{"version": "v2.0", "data": [', "not valid JSON (Expecting value at line 1, column 30)"),
        ("data", '{"version": "v2.0"}', "not a SQuAD JSON file (expected an object with a 'data' list of articles)"),
        (
            "data",
            '{"data": [{"paragraphs": [{"qas": [{"answers": []}]}]}]}',
            "article 0, paragraph 0, question 0 has no string 'id'",
        ),
    ],
)
def test_cli_bad_files_give_one_clean_line(files, which, content, message, capsys):
    data, predictions = files
    path = data if which == "data" else predictions
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert main([str(data), str(predictions)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"squad_eval: error: {path}: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"q1": 0.2, "q2": NaN, "q3": 0.8, "q4": 0.7}', "the no-answer probability for id 'q2' is NaN, not a number"),
        ('{"q1": 0.2, "q2": 0.1, "q3": Infinity, "q4": 0.7}', "for id 'q3' is Infinity, not a number in [0, 1]"),
        ('{"q1": 0.2, "q2": 0.1, "q3": 0.8, "q4": 70}', "for id 'q4' is 70, not a number in [0, 1]"),
        ('{"q1": true, "q2": 0.1, "q3": 0.8, "q4": 0.7}', "for id 'q1' is a boolean, not a number"),
        ('{"q1": "0.2", "q2": 0.1, "q3": 0.8, "q4": 0.7}', "for id 'q1' is a string, not a number"),
    ],
)
def test_cli_bad_no_answer_probabilities_give_one_clean_line(files, tmp_path, content, message, capsys):
    data, predictions = files
    na_probs = tmp_path / "na.json"
    na_probs.write_text(content)
    assert main([str(data), str(predictions), "--na_prob_file", str(na_probs)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"squad_eval: error: {na_probs}: the no-answer probability for id ")
    assert message in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_cli_unreadable_files(files, tmp_path, capsys):
    data, predictions = files
    assert main([str(data), str(tmp_path / "nope.json")]) == 1
    assert capsys.readouterr().err == f"squad_eval: error: {tmp_path / 'nope.json'}: no such file; check the path\n"
    assert main([str(data), str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(f"squad_eval: error: {tmp_path}: is a folder, not a file")
    na_probs = tmp_path / "na.json"
    na_probs.write_text('{"q1": 0.5}')
    assert main([str(data), str(predictions), "--na_prob_file", str(na_probs)]) == 1
    assert capsys.readouterr().err.startswith(f"squad_eval: error: {na_probs}: 3 of 4 questions have no no-answer")


def test_the_old_module_path_still_scores(tmp_path):
    """``python -m llama_squad.squad_eval`` (the path the README and users' scripts name) runs the same scorer."""
    import subprocess
    import sys

    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "a b", "qas": [
        {"id": "q1", "question": "q?", "answers": [{"text": "a", "answer_start": 0}]},
        {"id": "q2", "question": "q?", "answers": []}]}]}]}))  # fmt: skip
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"q1": "a", "q2": "b"}))
    result = subprocess.run([sys.executable, "-m", "llama_squad.squad_eval", str(data), str(predictions)],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert (scores["exact"], scores["HasAns_exact"], scores["NoAns_exact"]) == (50.0, 100.0, 0.0)

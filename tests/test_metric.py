"""The SQuAD v2 JSON scorer as an ``evaluate`` metric: loaded offline from the package, the numbers of squad_eval
(the official ones on real predictions) and of test.py's metrics."""

import json
import math

import pandas as pd
import pytest
from test_squad_eval import OFFICIAL_KEYS, squad_v2_dir

from llama_squad.metrics import SQUAD_V2_JSON
from llama_squad.tasks import squad_v2


@pytest.fixture(scope="module")
def metric():
    evaluate = pytest.importorskip("evaluate", reason="the metric is an evaluate module")
    return evaluate.load(SQUAD_V2_JSON)  # a local folder: nothing is downloaded (the tests run with HF_HUB_OFFLINE=1)


def test_hand_computed(metric):
    predictions = [
        '{"answer": "Normandy"}',  # valid, exact
        '{"answer": "?"}',  # valid, abstains on an unanswerable question: right
        'Sure! {"answer": "in France"}',  # not valid JSON, recovered: F1 2/3 against "France"... and 0 exact
        "no idea",  # nothing to read: the empty answer, wrong on an answerable question
        '{"answer": "?"}',  # abstains on an answerable question: wrong
    ]
    references = [["Normandy", "Normandy, France"], [], ["France"], ["Rollo"], ["10th century"]]
    scores = metric.compute(predictions=predictions, references=references)
    assert scores["total"] == 5 and scores["HasAns_total"] == 4 and scores["NoAns_total"] == 1
    assert scores["exact"] == pytest.approx(100 * 2 / 5)
    # "in France" vs "France": precision 1/2, recall 1, F1 2/3
    assert scores["f1"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 5)
    assert scores["valid_json"] == pytest.approx(100 * 3 / 5)
    assert scores["answer_found"] == pytest.approx(100 * 4 / 5)
    assert scores["exact_valid_json"] == pytest.approx(100 * 2 / 3)
    assert scores["correct_no_answer"] == scores["abstain_recall"] == 100.0
    assert scores["abstain_precision"] == pytest.approx(50.0)
    assert scores["HasAns_exact"] == scores["correct_has_answer"] == pytest.approx(25.0)


def test_same_numbers_as_test_py(metric):
    """The metric is test.py's scoring: the rows score_output writes, summarized as metrics.json."""
    predictions = ['{"answer": "a"}', '{"answer": "?"}', "{'answer': 'b c'}", '```json\n{"answer": "the d"}\n```']
    references = [["a"], ["x"], ["b"], []]
    rows = [squad_v2.score_output(p, {"answers": r})[0] for p, r in zip(predictions, references, strict=True)]
    expected = squad_v2.summarize(pd.DataFrame(rows))
    scores = metric.compute(predictions=predictions, references=references)
    assert list(scores) == list(expected)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-9) or (math.isnan(value) and math.isnan(scores[key])), key


@pytest.mark.parametrize("scenario", ["bidaf_sa_elmo_allenai", "first_gold"])
def test_official_numbers_on_real_predictions(metric, scenario):
    """Real predictions written as the model writes them ("" as "?"): the official scores to 1e-9."""
    folder = squad_v2_dir()
    data = json.loads((folder / "dev-v2.0.json").read_text(encoding="utf-8"))["data"]
    qas = [qa for article in data for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    if scenario == "first_gold":
        answers = {qa["id"]: qa["answers"][0]["text"] if qa["answers"] else "" for qa in qas}
    else:
        answers = json.loads((folder / "predictions" / f"{scenario}.json").read_text())
    expected = json.loads((folder / "predictions" / "expected_scores.json").read_text())[scenario]
    predictions = [json.dumps({"answer": answers[qa["id"]] or "?"}) for qa in qas]
    references = [[a["text"] for a in qa["answers"]] for qa in qas]
    scores = metric.compute(predictions=predictions, references=references)
    for key in OFFICIAL_KEYS:
        assert scores[key] == pytest.approx(expected[key], rel=0, abs=1e-9), key
    assert scores["valid_json"] == 100.0

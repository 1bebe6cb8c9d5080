"""SQuAD v2 scores of raw JSON model outputs, as an ``evaluate`` metric: the numbers test.py writes to metrics.json.

    import evaluate
    from llama_squad.metrics import SQUAD_V2_JSON  # or llama_squad.tasks.squad_v2.metric

    metric = evaluate.load(SQUAD_V2_JSON)
    metric.compute(predictions=['{"answer": "Normandy"}', '{"answer": "?"}'], references=[["Normandy"], []])

Each prediction is what the model wrote; it is parsed as llama_squad.answers.parse_json_answer parses it ("?" and
unparseable output score as the empty answer) and scored with llama_squad.squad_eval (the official evaluate-v2.0.py
numbers). Each reference is the list of gold answer texts ([] for an unanswerable question).
"""

import datasets
import evaluate
import pandas as pd

from llama_squad.tasks import squad_v2

_DESCRIPTION = """The official SQuAD v2 exact match and F1 (evaluate-v2.0.py, with the HasAns_/NoAns_ split) of model
outputs in the form {"answer": "..."}, where "?" means the context holds no answer, plus how often the output is valid
JSON and how well the model abstains."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: the raw model outputs (strings), e.g. '{"answer": "Normandy"}' or '{"answer": "?"}'.
    references: for each prediction, its gold answer texts (a list of strings; [] when unanswerable).
Returns (percentages unless named *_total or total; NaN where a subset is empty):
    exact, f1, total, HasAns_exact, HasAns_f1, HasAns_total, NoAns_exact, NoAns_f1, NoAns_total: the official scores;
    valid_json: outputs that are exactly one JSON object with a string "answer";
    answer_found: outputs from which an answer could be recovered (leniently);
    exact_valid_json: exact match among valid-JSON outputs;
    correct_no_answer (= abstain_recall): unanswerable questions answered "?";
    correct_has_answer (= HasAns_exact): answerable questions answered exactly;
    abstain_precision: "?" answers given to questions that are indeed unanswerable.
"""

_CITATION = """@inproceedings{rajpurkar-etal-2018-know,
    title = "Know What You Don't Know: Unanswerable Questions for {SQ}u{AD}",
    author = "Rajpurkar, Pranav and Jia, Robin and Liang, Percy",
    booktitle = "Proceedings of ACL 2018",
    year = "2018",
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SquadV2Json(evaluate.Metric):
    """SQuAD v2 exact match and F1 of JSON answers, with JSON validity and abstention."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references):
        rows = []
        for raw, answers in zip(predictions, references, strict=True):
            rows.extend(squad_v2.score_output(raw, {"answers": list(answers)}))
        return squad_v2.summarize(pd.DataFrame(rows))

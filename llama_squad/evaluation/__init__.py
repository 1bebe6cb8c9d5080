"""The evaluation pipeline: a split's questions asked of a model in batches (through the engine,
:mod:`llama_squad.generation`), one scored results row per question, the run's metrics.

:mod:`.examples` (the questions, their fingerprint, a run's settings, each process's share), :mod:`.answering`
(prompts as in training, grammars, turns: the :class:`Answerer` test.py and the chat use), :mod:`.batching` (by
length, or by shared prefix), :mod:`.pipeline` (answering into results rows, resumably; the metrics file) and
:mod:`.runs` (a run in its output folder: lock, resume, shards, merge, metrics).
"""

from llama_squad.evaluation.answering import ANSWER_PREFIX, Answerer, Conversation, load_answerer, start_conversation
from llama_squad.evaluation.batching import batches_by_length, batches_of_groups, prefix_groups
from llama_squad.evaluation.examples import dataset_fingerprint, load_examples, run_settings, share
from llama_squad.evaluation.pipeline import answer_examples, results_rows, save_metrics, warn_beyond_context
from llama_squad.evaluation.runs import (
    CALIBRATION_DIR,
    EvaluationRun,
    headline,
    load_calibration_examples,
    process_state,
    thresholds_for,
    update_model_card,
)

__all__ = [
    "ANSWER_PREFIX", "Answerer", "Conversation", "load_answerer", "start_conversation", "batches_by_length",
    "batches_of_groups", "prefix_groups", "dataset_fingerprint", "load_examples", "run_settings", "share",
    "answer_examples", "results_rows", "save_metrics", "warn_beyond_context", "EvaluationRun", "process_state",
    "CALIBRATION_DIR", "load_calibration_examples", "thresholds_for", "update_model_card", "headline",
]  # fmt: skip

"""One evaluation run in its output folder: one run at a time per folder, resumed only with the same settings and
only with its own questions, each process answering its share, the shards merged, the metrics of exactly the rows."""

import logging
import os
from pathlib import Path

from llama_squad import distributed, results
from llama_squad.evaluation.examples import share
from llama_squad.evaluation.pipeline import answer_examples, save_metrics
from llama_squad.files import output_lock
from llama_squad.tasks import get_task

logger = logging.getLogger(__name__)

CALIBRATION_DIR = "calibration"  # OUTPUT_DIR/calibration: the run on the split that chooses the no-answer threshold


def process_state():
    """This process's place among ``accelerate launch``'s (torchrun's) processes, or the one process (accelerate's
    ``PartialState``). Without CUDA, several processes talk over gloo, which accelerate uses only when asked for the
    CPU. Every process but the first of each machine logs warnings only."""
    import torch
    from accelerate import PartialState

    distributed_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    state = PartialState(cpu=distributed_cpu)
    distributed.quiet_replicas(state.num_processes, state.process_index, state.is_local_main_process)
    return state


class EvaluationRun:
    """The questions of a run (``examples``, one task) answered into ``output_dir/results.csv`` with ``settings``
    (:func:`llama_squad.evaluation.examples.run_settings`), by the processes of ``state`` (:func:`process_state`)."""

    def __init__(self, output_dir: str | os.PathLike, settings: dict, examples: list[dict], state):
        self.output_dir = Path(output_dir)
        self.results_csv = self.output_dir / "results.csv"
        self.settings = settings
        self.examples = examples
        self.state = state
        self.task = get_task(examples[0]["task"])
        self.columns = results.result_columns(self.task)
        self.done: set[str] = set()
        self.mine = share(examples, state.process_index, state.num_processes)

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def device_map(self):
        """Where this process puts the model: its own GPU when several processes share a machine, else the default."""
        processes, device = self.state.num_processes, self.state.device
        return {"": device} if processes > 1 and device.type == "cuda" else None

    def claim(self, stack, overwrite: bool) -> list[dict]:
        """Lock the folder (the main process holds the lock until ``stack`` closes), refuse results of other settings
        and rows of questions this run does not ask (a larger ``--limit`` extends a run); returns this process's
        questions still to answer."""
        distributed.run_on_main(self.state, lambda: stack.enter_context(output_lock(self.output_dir)))
        results.check_resume(self.output_dir, self.settings, len(self.examples), overwrite)
        ids = [str(ex["id"]) for ex in self.examples]
        self.done = set() if overwrite else results.answered_ids(self.output_dir, self.columns, ids)
        return [ex for ex in self.mine if str(ex["id"]) not in self.done]

    def start(self, info: dict, overwrite: bool) -> None:
        """Record the settings (``run.json``, with ``info``) before the first row; every process waits until the old
        results are gone (``overwrite``)."""
        if self.is_main:
            info = {**info, "processes": self.state.num_processes}
            results.start_run(self.output_dir, self.settings, len(self.examples), info, overwrite=overwrite)
        self.state.wait_for_everyone()

    def answer(self, answerer, batch_size: int) -> tuple[int, float] | None:
        """Answer this process's questions in batches, appending scored rows to results.csv (to this process's shard
        in a distributed run); every process then waits for the others. Returns (questions answered now, seconds),
        None when none was left."""
        own = self.results_csv if self.state.num_processes == 1 else results.shard_path(self.output_dir, self.rank)
        answered, seconds = answer_examples(
            answerer, self.mine, own, batch_size, progress=self.is_main, skip_ids=self.done
        )
        self.state.wait_for_everyone()
        return (answered, seconds) if answered else None

    @property
    def rank(self) -> int:
        return self.state.process_index

    def rows(self):
        """(Main process.) One results.csv (the shards merged in question order), read back."""
        if self.state.num_processes > 1 or results.run_files(self.output_dir) != [self.results_csv]:
            results.merge_shards(self.output_dir, self.columns, [str(ex["id"]) for ex in self.examples])
        return results.read_results(self.results_csv)

    def finish(self, thresholds=None, source: str | None = None):
        """(Main process.) The rows (:meth:`rows`) and ``metrics.json`` of exactly them, recording the task; with
        ``thresholds`` (a no-answer threshold, or one per group, and where it came from: ``source``) also the scores
        under it and the oracle ceiling (``llama_squad.evaluation.calibration``), recorded in run.json too. Writes the
        official SQuAD v2 script's files beside results.csv where the rows carry no-answer probabilities. Returns
        (rows, metrics)."""
        from llama_squad.evaluation import calibration

        rows = self.rows()
        metrics = {"task": self.task.name, **results.summarize(rows)}  # the task: export checks it
        if thresholds is not None:
            calibration.require_probabilities(rows, str(self.results_csv))
            metrics.update(calibration.summarize_calibration(self.task, rows, thresholds, source))
            results.update_run_record(
                self.output_dir, calibration={"threshold": metrics["no_answer_threshold"], "source": source}
            )
        if calibration.has_probabilities(rows):
            calibration.write_field_files(rows, self.output_dir)
        save_metrics(metrics, self.output_dir / "metrics.json")
        return rows, metrics


def load_calibration_examples(dataset_path: str, split: str) -> list[dict]:
    """The questions of the split a no-answer threshold is chosen on (``--calibrate_on``), checked to hold gold
    answers (a split without labels reads as every question unanswerable: no threshold can be chosen there)."""
    from llama_squad.evaluation.examples import load_examples
    from llama_squad.files import InputError

    examples = load_examples(dataset_path, split, None)
    if not any(len(ex["answers"]) for ex in examples):
        raise InputError(
            f"--calibrate_on {split}: no question of {dataset_path}'s {split} split has a gold answer, so no "
            "threshold can be chosen there; calibrate on a split with gold answers, or give one with "
            "--no_answer_threshold"
        )
    return examples


def thresholds_for(given: float | None, calibration: "EvaluationRun | None"):
    """(Main process.) The no-answer threshold(s) to apply and where they came from: ``given``
    (``--no_answer_threshold``), or chosen on the rows of the ``calibration`` run (``--calibrate_on``, recorded in
    its folder's ``calibration.json``); (None, None) for neither."""
    from llama_squad.evaluation import calibration as cal
    from llama_squad.files import atomic_write_json

    if given is not None:
        return given, "--no_answer_threshold"
    if calibration is None:
        return None, None
    rows = calibration.rows()
    cal.check_threshold_source(calibration.task, rows, str(calibration.results_csv))
    thresholds = cal.choose_thresholds(calibration.task, rows)
    source = f"{calibration.settings['dataset']['split']} split ({len(rows)} rows, {calibration.output_dir})"
    calibrated = cal.calibrated_metrics(calibration.task, rows, thresholds, cal.CALIBRATED)
    record = {"threshold": thresholds, "source": source, **results.summarize(rows), **calibrated}
    atomic_write_json(calibration.output_dir / "calibration.json", record)
    logger.info("no-answer threshold chosen on %s: %s", source, thresholds)
    return thresholds, source


def update_model_card(model_folder: str, evaluation_folder: str | os.PathLike) -> list:
    """Write the scores of an evaluation (its metrics.json) into the model cards of the train.py output folder the
    evaluated adapter or merged model belongs to; a folder train.py did not write keeps its card. A card that cannot
    take them (another task's scores) is logged, never an error of the evaluation. Returns the cards written."""
    from llama_squad import export
    from llama_squad.files import InputError

    folder = export.training_folder(model_folder) if Path(model_folder).is_dir() else None
    if folder is None:
        return []
    try:
        written = export.refresh_cards(folder, Path(evaluation_folder) / "metrics.json")
    except InputError as e:
        logger.warning("the model cards of %s keep their scores: %s", folder, e)
        return []
    for path in written:
        logger.info("wrote the scores into %s", path)
    return written


def headline(task, metrics: dict) -> str:
    """The task's headline metrics in one line: ``exact 46.4, f1 58.8, ...``."""
    return ", ".join(f"{m} {metrics[m]:.1f}" for m in task.headline_metrics if isinstance(metrics.get(m), float))

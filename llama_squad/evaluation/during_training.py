"""The task's own scores while training: at every evaluation, the same N validation questions answered by the model
being trained through test.py's pipeline, scored by the task, and logged beside the loss as ``eval_<metric>``."""

import logging
import time

import pandas as pd

logger = logging.getLogger(__name__)


def sample_questions(task, examples: list[dict], n: int, seed: int) -> list[dict]:
    """The questions each evaluation asks: ``n`` of ``examples`` drawn with ``seed`` (the same every time, so that the
    curve compares like with like), in the split's order (questions that share a prompt stay together). All of them,
    logged, when the split holds fewer."""
    if n >= len(examples):
        if n > len(examples):
            logger.warning(
                "--eval_questions %d: the validation split holds %d questions; asking all", n, len(examples)
            )
        return list(examples)
    return task.evaluation_sample(examples, n, seed)


class TaskEvaluation:
    """Answers ``questions`` with the model a trainer trains (greedy, or as ``options`` say: test.py's
    GenerationOptions, ``--constrain`` included; prompted with the model's pause tokens) and scores them with the
    task: ``eval_<metric>`` for the task's headline metrics, with the seconds it took and the questions per second."""

    def __init__(self, questions: list[dict], tokenizer, options, pause=None, batch_size: int = 8):
        from llama_squad.tasks import get_task

        self.questions = questions
        self.tokenizer = tokenizer
        self.options = options
        self.pause = pause
        self.batch_size = batch_size
        self.task = get_task(questions[0]["task"])

    @property
    def metric_names(self) -> list[str]:
        """The names it logs (without ``eval_``): the task's headline metrics."""
        return list(self.task.headline_metrics)

    def run(self, model, accelerator, sharded: bool = False) -> dict[str, float]:
        """Answer and score the questions: each process its share (gathered on every process, so that each takes the
        same best-checkpoint decision); ``sharded`` (FSDP, ZeRO-3): every process in every generate call."""
        import torch

        from llama_squad.evaluation.answering import Answerer
        from llama_squad.evaluation.examples import share
        from llama_squad.evaluation.pipeline import answered_batches
        from llama_squad.generation import Generator

        start = time.perf_counter()
        rank, processes = accelerator.process_index, accelerator.num_processes
        mine = share(self.questions, rank, processes)
        if sharded and processes > 1:  # equal shares (the last question again): the same batches on every process
            size = -(-len(self.questions) // processes)
            mine = (mine + mine[-1:] * size)[:size]
        training = model.training
        model.eval()
        try:
            engine = Generator(model, self.tokenizer, self.options, synced=sharded and processes > 1)
            answerer = Answerer(engine, self.pause)
            with torch.no_grad():
                rows = [row for batch in answered_batches(answerer, mine, self.batch_size, equal_batches=sharded)
                        for row in batch]  # fmt: skip
        finally:
            model.train(training)
        if processes > 1:
            from accelerate.utils import gather_object

            rows = gather_object(rows)
        results = pd.DataFrame(rows).drop_duplicates("id")
        metrics = self.task.summarize(results)
        seconds = time.perf_counter() - start
        out = {f"eval_{name}": metrics[name] for name in self.metric_names if name in metrics}
        out["eval_task_seconds"] = seconds
        out["eval_task_questions_per_s"] = len(self.questions) / seconds
        return out


def trainer_class(base):
    """``base`` (TRL's SFTTrainer) whose ``evaluate`` also runs its ``task_evaluation`` (when set): the task's metrics
    are logged like the loss (TensorBoard, W&B, the log history) and returned with it, so that
    ``--metric_for_best_model exact`` keeps the best checkpoint by them."""

    class TaskMetricsTrainer(base):
        task_evaluation: TaskEvaluation | None = None
        sharded_model: bool = False

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            if self.task_evaluation is not None and metric_key_prefix == "eval":
                task_metrics = self.task_evaluation.run(self.model, self.accelerator, self.sharded_model)
                shown = ", ".join(f"{k.removeprefix('eval_')} {v:.1f}" for k, v in task_metrics.items())
                metrics.update(task_metrics)
                self.log(dict(task_metrics))  # (log adds the epoch to what it is given)
                logger.info("step %d, %d questions: %s", self.state.global_step, len(self.task_evaluation.questions),
                            shown)  # fmt: skip
            return metrics

    TaskMetricsTrainer.__name__ = f"TaskMetrics{base.__name__}"
    return TaskMetricsTrainer

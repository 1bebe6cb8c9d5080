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

    def answer(self, answerer, batch_size: int) -> tuple[int, float]:
        """Answer this process's questions in batches, appending scored rows to results.csv (to this process's shard
        in a distributed run); every process then waits for the others. Returns (questions answered now, seconds)."""
        own = self.results_csv if self.state.num_processes == 1 else results.shard_path(self.output_dir, self.rank)
        answered, seconds = answer_examples(
            answerer, self.mine, own, batch_size, progress=self.is_main, skip_ids=self.done
        )
        self.state.wait_for_everyone()
        return answered, seconds

    @property
    def rank(self) -> int:
        return self.state.process_index

    def finish(self):
        """(Main process.) One results.csv (the shards merged in question order), and ``metrics.json`` of exactly its
        rows, recording the task; returns (rows, metrics)."""
        if self.state.num_processes > 1 or results.run_files(self.output_dir) != [self.results_csv]:
            results.merge_shards(self.output_dir, self.columns, [str(ex["id"]) for ex in self.examples])
        rows = results.read_results(self.results_csv)
        metrics = results.summarize(rows)
        save_metrics({"task": self.task.name, **metrics}, self.output_dir / "metrics.json")  # export checks it
        return rows, metrics

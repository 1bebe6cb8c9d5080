"""Did fine-tuning cost general ability? lm-evaluation-harness tasks on the base model and the tuned one, one table.

    python -m llama_squad.general_eval --adapter_path output/smollm2 --tasks hellaswag,arc_easy,mmlu \
        --limit 500 --output_dir output/smollm2/general_eval

Runs ``lm_eval.simple_evaluate`` (lm-eval's Hugging Face model, ``HFLM``) twice on the same tasks and examples: the
base model, then the base model with the LoRA adapter (lm-eval's ``peft=``) or ``--tuned_model_name_or_path`` (a
merged model). Writes OUTPUT_DIR/general_eval.csv and general_eval.md (one row per task and metric: base, tuned,
tuned - base, and the standard errors) and the raw lm-eval results of each model as JSON. Hub tasks need the Hub;
``--include_path`` adds task YAMLs of your own (local data, offline). Needs lm-eval: pip install -e ".[general-eval]".
"""

import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from llama_squad.config import loading_option

logger = logging.getLogger(__name__)

# Keys of lm-eval's per-task results that are not scores.
NOT_METRICS = ("alias", "sample_len", "sample_count")
COLUMNS = ("task", "metric", "base", "tuned", "difference", "base_stderr", "tuned_stderr", "n")


@dataclass
class GeneralEvalArguments:
    """The models compared, the lm-eval tasks, and where the table goes."""

    tasks: str = field(metadata={"help": "lm-eval task names, comma-separated (hellaswag,arc_easy,mmlu)."})
    output_dir: str = field(metadata={"help": "general_eval.csv, general_eval.md and the raw results go here."})
    model_name_or_path: str = field(
        default="embedded", metadata={"help": "The base model: Hub id, folder, or 'embedded' (SmolLM2-135M-Instruct)."}
    )
    adapter_path: str | None = field(
        default=None, metadata={"help": "The tuned model: this LoRA adapter (train.py's output_dir) on the base."}
    )
    tuned_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The tuned model as a whole model (a merged folder), instead of an adapter."}
    )
    include_path: str | None = field(
        default=None, metadata={"help": "A folder of lm-eval task YAMLs of your own (TaskManager include_path)."}
    )
    limit: float | None = field(
        default=None, metadata={"help": "Examples per task (a fraction if < 1), the same for both models."}
    )
    num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot examples (default: each task's)."})
    batch_size: int = field(default=8, metadata={"help": "lm-eval batch size."})
    device: str | None = field(default=None, metadata={"help": "cuda, cuda:0, cpu (default: cuda if available)."})
    # as in train.py and test.py (the revision is the base model's; no 4/8-bit or attention options: lm-eval loads)
    model_revision: str = loading_option("model_revision")
    dtype: str = loading_option("dtype")
    model_cache_dir: str | None = loading_option("model_cache_dir")
    trust_remote_code: bool = loading_option("trust_remote_code")
    seed: int = field(default=1234, metadata={"help": "lm-eval's random, numpy, torch and few-shot seeds."})

    def task_names(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]

    def problems(self) -> list[str]:
        """What is wrong with these options, one line per option (empty when they are fine)."""
        problems = []
        if not self.task_names():
            problems.append(f"--tasks {self.tasks!r}: name at least one lm-eval task, e.g. hellaswag,arc_easy")
        if (self.adapter_path is None) == (self.tuned_model_name_or_path is None):
            problems.append("give the tuned model: --adapter_path (a LoRA adapter) or --tuned_model_name_or_path")
        if self.limit is not None and self.limit <= 0:
            problems.append(f"--limit {self.limit}: give a positive number of examples (or a fraction < 1)")
        if self.batch_size < 1:
            problems.append(f"--batch_size {self.batch_size}: give a positive number")
        if self.include_path is not None and not Path(self.include_path).is_dir():
            problems.append(f"--include_path {self.include_path}: no such folder of task YAMLs")
        return problems


def task_manager(include_path: str | None = None):
    """lm-eval's ``TaskManager``, with the task YAMLs of ``include_path`` added."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path) if include_path else TaskManager()


def check_tasks(names: list[str], manager) -> None:
    """Stop before loading any model when a task name is unknown to lm-eval (and to ``--include_path``)."""
    from llama_squad.files import InputError

    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise InputError(
            f"--tasks: unknown lm-eval task(s) {unknown}: see `lm-eval ls tasks`, or add your own YAMLs with "
            "--include_path"
        )
    problem = hub_data_problem(names, manager)
    if problem:
        raise InputError(problem)


def hub_data_problem(names: list[str], manager) -> str | None:
    """Why the tasks' data cannot be had (a Hub dataset not in the local cache while offline or without a network),
    or None: lm-eval would otherwise retry its downloads, then stop with a long traceback."""
    import os

    from huggingface_hub.constants import HF_HUB_CACHE, HF_HUB_OFFLINE

    from llama_squad.models import hub_unreachable

    needed = []
    for name in names:
        entry = getattr(manager, "task_index", {}).get(name)
        path = (getattr(entry, "cfg", None) or {}).get("dataset_path")
        if isinstance(path, str) and not os.path.isdir(path):
            cached = (Path(HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}").is_dir()
            if not cached:
                needed.append(f"{name} ({path})")
    if not needed:
        return None
    tasks = ", ".join(needed)
    fix = "download them where there is a network and run with HF_HUB_OFFLINE=1, or give local task YAMLs"
    if HF_HUB_OFFLINE:
        return f"--tasks: the Hub datasets of {tasks} are not in the local cache while HF_HUB_OFFLINE is set: {fix}"
    unreachable = hub_unreachable()
    if unreachable:
        return f"--tasks: {tasks} need the Hub's datasets, and the Hub cannot be reached ({unreachable}): {fix}"
    return None


def evaluate_model(model: str, tasks: list[str], manager, args: GeneralEvalArguments, **model_kwargs) -> dict:
    """``lm_eval.simple_evaluate`` of one model: ``model`` is a folder or Hub id (``model_kwargs`` go to ``HFLM``,
    e.g. ``peft=``); returns lm-eval's results dict."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from llama_squad.models import resolve_dtype

    device = args.device or ("cuda" if _cuda() else "cpu")
    lm = HFLM(
        pretrained=model,
        device=device,
        dtype=resolve_dtype(args.dtype),
        batch_size=args.batch_size,
        trust_remote_code=args.trust_remote_code,
        **model_kwargs,
    )
    return simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        task_manager=manager,
        log_samples=False,
        random_seed=args.seed,
        numpy_random_seed=args.seed,
        torch_random_seed=args.seed,
        fewshot_random_seed=args.seed,
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def comparison(base: dict, tuned: dict) -> list[dict]:
    """One row per (task, metric) of lm-eval's ``results`` sections: base, tuned, tuned - base, standard errors and
    the number of examples. Metrics are lm-eval's ``name,filter`` keys (``acc,none``); groups (mmlu) have rows too."""
    rows = []
    for task, metrics in base["results"].items():
        other = tuned["results"].get(task, {})
        n = (base.get("n-samples") or {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            name, _, filter_name = key.partition(",")
            if name in NOT_METRICS or name.endswith("_stderr") or _number(value) is None:
                continue
            stderr_key = f"{name}_stderr,{filter_name}" if filter_name else f"{name}_stderr"
            b, t = _number(value), _number(other.get(key))
            rows.append(
                {
                    "task": task,
                    "metric": name if filter_name in ("", "none") else key,
                    "base": b,
                    "tuned": t,
                    "difference": None if t is None else t - b,
                    "base_stderr": _number(metrics.get(stderr_key)),
                    "tuned_stderr": _number(other.get(stderr_key)),
                    "n": n,
                }
            )
    return rows


def write_table(rows: list[dict], output_dir: str | Path) -> tuple[Path, Path]:
    """``general_eval.csv`` (full precision) and ``general_eval.md`` (4 decimals) in ``output_dir``."""
    import pandas as pd

    from llama_squad.files import atomic_write_text

    output_dir = Path(output_dir)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    csv_path, md_path = output_dir / "general_eval.csv", output_dir / "general_eval.md"
    atomic_write_text(csv_path, table.to_csv(index=False))

    def show(value) -> str:
        return "" if value is None or math.isnan(value) else f"{value:.4f}"

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [row["task"], row["metric"]]
        cells += [show(row[k]) for k in ("base", "tuned")]
        diff = row["difference"]
        cells.append("" if diff is None else f"{diff:+.4f}")
        cells += [show(row[k]) for k in ("base_stderr", "tuned_stderr")]
        cells.append("" if row["n"] is None else str(row["n"]))
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def run(args: GeneralEvalArguments) -> list[dict]:
    """Evaluate the base and the tuned model on ``args.tasks``; write the table and the raw results."""
    from llama_squad import adapters, models
    from llama_squad.files import InputError, atomic_write_json

    # 1. Check the options, the tasks and the models' files before loading anything heavy.
    problems = args.problems()
    if problems:
        raise InputError("invalid options:\n  - " + "\n  - ".join(problems))
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise InputError('general_eval needs lm-eval: pip install -e ".[general-eval]"') from None
    manager = task_manager(args.include_path)
    tasks = args.task_names()
    check_tasks(tasks, manager)
    models.check_model_source(args.model_name_or_path, revision=args.model_revision)
    if args.adapter_path:
        adapters.check_adapter(args.adapter_path)
    else:
        models.check_model_source(args.tuned_model_name_or_path, option="--tuned_model_name_or_path")

    # 2. The base model (the embedded one as its converted folder), then the tuned one on the same examples.
    base_path = models.resolve_model_path(args.model_name_or_path, cache_dir=args.model_cache_dir)
    logger.info("evaluating the base model %s on %s", args.model_name_or_path, ", ".join(tasks))
    base = evaluate_model(base_path, tasks, manager, args, revision=args.model_revision)
    if args.adapter_path:
        logger.info("evaluating the base model with the adapter %s", args.adapter_path)
        tuned = evaluate_model(
            base_path, tasks, manager, args, revision=args.model_revision, peft=str(args.adapter_path)
        )
    else:
        tuned_path = models.resolve_model_path(args.tuned_model_name_or_path, cache_dir=args.model_cache_dir)
        logger.info("evaluating the tuned model %s", tuned_path)
        tuned = evaluate_model(tuned_path, tasks, manager, args)

    # 3. One table, and what lm-eval returned for each model.
    rows = comparison(base, tuned)
    output_dir = Path(args.output_dir)
    for name, results in (("base", base), ("tuned", tuned)):
        keep = {k: results[k] for k in ("results", "n-samples", "configs", "versions") if k in results}
        atomic_write_json(output_dir / f"lm_eval_{name}.json", json.loads(json.dumps(keep, default=str)))
    csv_path, md_path = write_table(rows, output_dir)
    logger.info("wrote %s and %s", csv_path, md_path)
    return rows


ARGUMENTS = [GeneralEvalArguments]  # the options of the command line


def main(argv: list[str] | None = None) -> int:
    """Compare base and tuned model; 0 on success, 1 on bad input."""
    from llama_squad.cli import exit_code_of, parse_dataclasses, setup_logging

    (args,) = parse_dataclasses(ARGUMENTS, argv, description=__doc__)
    setup_logging()
    try:
        run(args)
    except Exception as e:  # bad input, no network, a full disk: one line naming it and the fix; a bug: traceback
        return exit_code_of(e, logger.error, where=args.output_dir)
    sys.stdout.write((Path(args.output_dir) / "general_eval.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

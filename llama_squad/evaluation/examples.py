"""The questions of a run: a dataset split checked to be one, its fingerprint, what defines the run's results, and
each process's share."""

from dataclasses import asdict
from pathlib import Path


def load_examples(dataset_path: str, split: str, limit: int | None):
    """The split of a dataset written by create_dataset.py (the first ``limit`` rows), checked to be one (its question
    ids unique)."""
    from llama_squad.files import InputError
    from llama_squad.tasks import task_names
    from llama_squad.tasks.common import DATASET_COLUMNS, dataset_folder_problem, load_dataset_folder

    problem = dataset_folder_problem(dataset_path)
    if problem:
        raise InputError(problem)
    try:
        dataset = load_dataset_folder(dataset_path)
    except (OSError, ValueError) as e:  # a missing or corrupt data file
        raise InputError(
            f"{dataset_path}: cannot read the dataset ({e}); write it again with create_dataset.py"
        ) from None
    if split not in dataset:
        raise InputError(f"{dataset_path}: no split {split!r} (it has {', '.join(dataset)}): pick one with --split")
    examples = dataset[split]
    missing = [c for c in DATASET_COLUMNS if c not in examples.column_names]
    if missing:
        raise InputError(
            f"{dataset_path}: the {split} split lacks the columns {missing} (it has {examples.column_names}); "
            "it was not written by create_dataset.py: build it with create_dataset.py"
        )
    if len(examples) == 0:
        raise InputError(f"{dataset_path}: the {split} split is empty: nothing to answer")
    tasks = set(examples.unique("task"))
    if len(tasks) != 1 or not tasks <= set(task_names()):
        raise InputError(f"{dataset_path}: the {split} split must hold one known task, it holds {sorted(tasks)}")
    seen: set[str] = set()
    for qid in examples["id"]:  # results and scores are kept by id: a repeated one breaks resuming and scoring
        if qid in seen:
            raise InputError(
                f"{dataset_path}: the {split} split repeats the question id {qid!r}: ids must be unique (results are "
                "kept by id); rebuild the dataset with create_dataset.py"
            )
        seen.add(qid)
    if limit is not None:
        examples = examples.select(range(min(limit, len(examples))))
    return [dict(ex) for ex in examples]


def dataset_fingerprint(dataset_path: str, split: str) -> str:
    """A content hash of a saved split's data files: the same questions and prompts give the same fingerprint."""
    from llama_squad.files import fingerprint_files

    return fingerprint_files(sorted((Path(dataset_path) / split).glob("*.arrow")))


def run_settings(
    task: str,
    dataset_path: str,
    split: str,
    model_args,
    options,
    adapter_path: str | None = None,
    merge_adapter: bool = True,
    seed: int = 42,
) -> dict:
    """What defines the results rows, compared on a resume: the model's and adapter's weights (``model_args``:
    ModelLoadingArguments), the questions and how they are answered (``options``: GenerationOptions). Paths are not
    compared (a moved folder is the same model); the batch size is free. ``quantization`` is recorded as before
    --load_in_4bit / --load_in_8bit (None, "4bit", "8bit"): older run.json files stay comparable."""
    from llama_squad import adapters, models

    decoding = asdict(options)
    quantization = models.quantization_name(model_args)
    if options.do_sample:
        decoding["seed"] = seed
    else:  # greedy: sampling options and the seed change nothing
        for name in ("temperature", "top_p", "top_k"):
            decoding.pop(name)
    return {
        "task": task,
        "dataset": {"fingerprint": dataset_fingerprint(dataset_path, split), "split": split},
        "model": models.model_fingerprint(model_args.model_name_or_path, model_args.model_revision),
        "adapter": adapters.adapter_fingerprint(adapter_path) if adapter_path else None,
        "merge_adapter": bool(adapter_path) and merge_adapter and not quantization,
        "dtype": str(models.resolve_dtype(model_args.dtype)).removeprefix("torch."),
        "quantization": quantization,
        "attn_implementation": model_args.attn_implementation,
        "generation": decoding,
    }


def share(examples: list, rank: int, processes: int) -> list:
    """The questions process ``rank`` of ``processes`` answers: a contiguous block each, so that the questions that
    share a prompt prefix (one dialogue turn, one paragraph) stay together."""
    return examples[rank * len(examples) // processes : (rank + 1) * len(examples) // processes]

"""What a training run leaves once its last step is done: the final save, tokenizer, pause tokens, loss plot, merged
model, model cards and pushes; on a re-run of a finished run, only the pieces a crash left missing."""

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from llama_squad import checkpoints, export
from llama_squad import pause as pause_tokens
from llama_squad.files import InputError, atomic_path

logger = logging.getLogger(__name__)

LOSS_PLOT = "loss.png"
CARD = "README.md"
MERGED_DIR = "merged"


def planned_steps(config, train_examples: int) -> int:
    """The optimizer steps a run of ``config`` (SFTConfig) over ``train_examples`` takes in all: ``--max_steps``, or
    the epochs' steps as transformers' Trainer counts them (``set_initial_training_values``: batches of
    ``per_device_train_batch_size`` on each of ``world_size`` processes, ``gradient_accumulation_steps`` of them per
    step, a last partial step counted)."""
    if config.max_steps > 0:
        return config.max_steps
    per_step = config.per_device_train_batch_size * max(1, config.world_size)
    batches = train_examples // per_step if config.dataloader_drop_last else math.ceil(train_examples / per_step)
    accumulation = config.gradient_accumulation_steps
    updates = max(batches // accumulation + int(batches % accumulation > 0), 1)
    return math.ceil(config.num_train_epochs * updates)


def checkpoint_step(checkpoint: str | os.PathLike) -> int:
    """The step a complete checkpoint was saved at (its ``trainer_state.json``)."""
    state = json.loads((Path(checkpoint) / checkpoints.TRAINER_STATE).read_text(encoding="utf-8"))
    return int(state["global_step"])


def finished_step(checkpoint: str | os.PathLike | None, planned: int) -> int | None:
    """The step of ``checkpoint`` when the run it resumes has nothing left to train (it holds step ``planned`` or a
    later one), else None.

    Resumed from such a checkpoint, transformers' Trainer (5.2x) still takes one optimizer step before it checks
    ``max_steps``, and the adapter saved after it is no longer the finished run's: such a run is not resumed.
    """
    if checkpoint is None:
        return None
    step = checkpoint_step(checkpoint)
    return step if step >= planned else None


# What Trainer.save_model writes into output_dir that a checkpoint of the same step holds too (the weights and their
# configs), and the state of save_state.
FINAL_SAVE_FILES = (
    *checkpoints.WEIGHT_FILES, *checkpoints.WEIGHT_INDEXES, "adapter_config.json", "config.json",
    "generation_config.json", checkpoints.TRAINER_STATE,
)  # fmt: skip


def final_save_problem(output_dir: str | os.PathLike, step: int, adapter: bool) -> str | None:
    """Why ``output_dir`` lacks the final save of a run that ended at ``step`` (weights whole, trainer_state.json of
    that step), or None."""
    folder = Path(output_dir)
    problem = checkpoints.checkpoint_problem(folder, save_only_model=True)
    if problem is None and adapter:
        problem = checkpoints.adapter_problem(folder)
    if problem is None and checkpoint_step(folder) != step:
        problem = f"{checkpoints.TRAINER_STATE} is of another step"
    return problem


def restore_final_save(output_dir: str | os.PathLike, checkpoint: str | os.PathLike, adapter: bool) -> list[str]:
    """Copy the final save of a finished run from its last checkpoint into ``output_dir`` where a crash left it
    missing or torn (the checkpoint holds the same weights); returns the names of the files copied."""
    step = checkpoint_step(checkpoint)
    problem = final_save_problem(output_dir, step, adapter)
    if problem is None:
        return []
    source = Path(checkpoint)
    names = [name for name in FINAL_SAVE_FILES if (source / name).is_file()]
    for index in checkpoints.WEIGHT_INDEXES:  # the shards a sharded model's index lists
        if (source / index).is_file():
            names += sorted(set(json.loads((source / index).read_text())["weight_map"].values()))
    if not any(name in checkpoints.WEIGHT_FILES or name.endswith(".safetensors") for name in names):
        raise InputError(
            f"--output_dir {output_dir}: the run finished at step {step}, but its final save is missing ({problem}) "
            f"and {source} holds no weights to take it from (it is sharded by FSDP or DeepSpeed): pass "
            "--resume_from_checkpoint no to train again, or choose another --output_dir"
        )
    logger.warning("the final save is missing (%s): taking it from %s", problem, source)
    for name in names:
        with atomic_path(Path(output_dir) / name) as tmp:
            shutil.copyfile(source / name, tmp)
    return names


@dataclass
class RunOutputs:
    """What the files after training are made from: the trained model's recipe and the run's record."""

    output_dir: str
    model_path: str  # the base model's folder or Hub id, as loaded (the embedded model's cache folder)
    model_args: object  # ModelArguments
    script_args: object  # ScriptArguments
    resolved: dict  # run_config.yaml's mapping
    train_examples: int
    pause: object = None  # llama_squad.pause.PauseTokens or None
    trust_remote_code: bool = False
    best: dict | None = None  # the checkpoint the weights are from (--load_best_model_at_end): metric, step, value


def write_outputs(run: RunOutputs, tokenizer, log_history: list[dict], only_missing: bool = False) -> list[Path]:
    """After the final save (main process): the tokenizer and chat template, ``pause_tokens.json``, ``loss.png``, the
    merged model (``--merge``), the model cards, then the pushes that were asked for. With ``only_missing`` (a re-run
    of a finished run) a file or folder that is already there is left as it is: the run changes nothing it finished.
    Returns the paths written."""
    from llama_squad.models import resolve_dtype
    from llama_squad.plotting import plot_losses

    out = Path(run.output_dir)
    model_args, script_args = run.model_args, run.script_args
    written: list[Path] = []

    def wanted(path: Path) -> bool:
        return not (only_missing and path.exists())

    if model_args.use_peft and (problem := checkpoints.adapter_problem(out)):
        raise RuntimeError(
            f"the adapter was not saved whole: {problem}. PEFT finds no LoRA weight in a state dict whose names an "
            "engine rewrote (as FSDP1 does, which train.py refuses): train on one GPU, with DDP "
            "(configs/accelerate/ddp.yaml) or FSDP2 (configs/accelerate/fsdp.yaml)"
        )
    if wanted(out / "tokenizer_config.json"):
        tokenizer.save_pretrained(out)
        written.append(out / "tokenizer_config.json")
    if run.pause is not None and wanted(out / pause_tokens.PAUSE_FILE):
        pause_tokens.save(run.pause, out)  # test.py prompts with them, as in training
        written.append(out / pause_tokens.PAUSE_FILE)
    if wanted(out / LOSS_PLOT) and plot_losses(log_history, out / LOSS_PLOT, title=out.name):
        written.append(out / LOSS_PLOT)

    card = dict(
        base_model=model_args.model_name_or_path,
        dataset_path=script_args.dataset_path,
        config=run.resolved,
        metrics=read_scores(run.output_dir, script_args.dataset_path),
        train_examples=run.train_examples,
        task=export.dataset_task(script_args.dataset_path),
        best=run.best,
    )
    merged = out / MERGED_DIR
    if script_args.merge and model_args.use_peft and wanted(merged):
        merge_dtype = model_args.dtype if script_args.merge_dtype == "auto" else script_args.merge_dtype
        export.merge_adapter(
            run.model_path, out, merged, resolve_dtype(merge_dtype), tokenizer,
            revision=model_args.model_revision, trust_remote_code=run.trust_remote_code,
        )  # fmt: skip
        written.append(merged)
    if (merged / "config.json").is_file() and wanted(merged / CARD):
        written.append(export.write_model_card(merged, export.MERGED, repo_id=script_args.hub_repo_id, **card))
    if script_args.hub_repo_id:
        export.push_folder(merged, script_args.hub_repo_id)
    if wanted(out / CARD):
        kind = export.ADAPTER if model_args.use_peft else export.MERGED
        written.append(export.write_model_card(out, kind, repo_id=script_args.push_adapter, **card))
    if script_args.push_adapter:
        export.push_adapter(out, script_args.push_adapter, model_args.model_name_or_path)
    return written


def read_scores(output_dir: str | os.PathLike, dataset_path: str) -> dict | None:
    """test.py's scores of this run for its cards (``output_dir/eval/metrics.json``), None when there are none; a
    file that cannot be read is logged and left out (train.py checked it before training)."""
    try:
        return export.read_metrics(output_dir, dataset_path=dataset_path)
    except InputError as e:
        logger.warning("the model cards go without test scores: %s", e)
        return None


def scores_problem(output_dir: str | os.PathLike, dataset_path: str) -> str | None:
    """Why ``output_dir/eval/metrics.json`` (test.py's scores, which go into the cards) cannot be used, or None:
    checked before training, so that a run does not fail after it."""
    path = Path(output_dir) / "eval" / "metrics.json"
    if not path.exists():
        return None
    fix = f"re-run test.py into {path.parent}, or delete {path}"
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"{path}: the scores of an earlier test.py run, which the model cards show, cannot be read ({e}): {fix}"
    try:
        export.read_metrics(output_dir, dataset_path=dataset_path)
    except InputError as e:  # another task's scores, or not a JSON object
        return str(e)
    return None

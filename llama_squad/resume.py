"""Resuming a training run: its resolved options (``run_config.yaml``), the checkpoint to resume from, what may change
between the two, and the one run per output folder."""

import dataclasses
import json
import logging
from pathlib import Path

import yaml

from llama_squad.config import ModelArguments, TrainConfig
from llama_squad.files import InputError, atomic_write_text, read_yaml

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.yaml"


def resolved_config(model_args, script_args, config) -> dict:
    """Every option of the run, as plain YAML-able values."""
    training = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    return {"model": dataclasses.asdict(model_args), "script": dataclasses.asdict(script_args), "training": training}


# Options that decide what a checkpoint holds: resuming it under other values would fail inside the Trainer, or
# silently train another model than the checkpoint's (other base weights, another quantization of them, another
# adapter scaling). The pause tokens add embedding rows (a shape) and decide where the model reads them.
CHECKPOINT_SHAPE = (
    "model_name_or_path",
    "model_revision",
    "load_in_4bit",
    "load_in_8bit",
    "bnb_4bit_quant_type",
    "use_bnb_nested_quant",
    "use_peft",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "lora_target_parameters",
    "lora_modules_to_save",
    "use_rslora",
    "use_dora",
    "pause_tokens",
    "pause_position",
)


def _comparable(config: dict) -> dict:
    """A resolved config (run_config.yaml) as this version records it, for comparing: ``quantization: 4bit`` (or
    8bit), the option before TRL's ``load_in_4bit`` / ``load_in_8bit``, becomes that flag; ``model_cache_dir``, once
    a script option, is a model option; a one-entry ``lora_target_modules`` list is its entry (TRL's ModelConfig
    records ``[all-linear]`` as ``all-linear``)."""
    model, script = dict(config.get("model") or {}), dict(config.get("script") or {})
    if "model_cache_dir" in script:
        model.setdefault("model_cache_dir", script.pop("model_cache_dir"))
    quantization = model.pop("quantization", None)
    if quantization in ("4bit", "8bit"):  # it was always NF4 with double quantization, as the defaults now are
        model[f"load_in_{quantization}"] = True
    targets = model.get("lora_target_modules")
    if isinstance(targets, list) and len(targets) == 1:
        model["lora_target_modules"] = targets[0]
    return {**config, "model": model, "script": script}


def check_resume_config(resolved: dict, output_dir: str, checkpoint: str) -> None:
    """Compare a resumed run's options with those the checkpoint's run saved (``run_config.yaml``): refuse when the
    model or adapter differs, warn about every other change (a new learning rate, say, is a user's right)."""
    path = Path(output_dir) / RUN_CONFIG
    if not path.exists():
        return
    fix = (
        f"it records the options {checkpoint} was trained with, which a resumed run must keep: restore it, pass "
        "--resume_from_checkpoint no to start afresh in this folder, or choose another --output_dir"
    )
    old = read_yaml(path, fix)
    sections = ("model", "script", "training")
    if not isinstance(old, dict) or not all(isinstance(old.get(s), dict | None) for s in sections):
        raise InputError(f"{path}: not a run_config.yaml written by train.py (model/script/training mappings); {fix}")
    old, resolved = _comparable(old), _comparable(resolved)
    changed = []
    # a model option the checkpoint's run did not record did not exist then: that run had its default behaviour
    defaults = {f.name: f.default for f in dataclasses.fields(ModelArguments) if f.default is not dataclasses.MISSING}
    for section in ("model", "script", "training"):
        before, now = old.get(section) or {}, resolved.get(section) or {}
        if section == "model":
            before = {k: v for k, v in defaults.items() if k in now} | before
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key) and key not in ("resume_from_checkpoint", "hub_token", "logging_dir"):
                changed.append((section, key, before.get(key), now.get(key)))
    shape = [c for c in changed if c[0] == "model" and c[1] in CHECKPOINT_SHAPE]
    if shape:
        raise InputError(
            f"--output_dir {output_dir}: {checkpoint} was trained with other model options ("
            + "; ".join(f"--{k} {b!r} then, {n!r} now" for _, k, b, n in shape)
            + "): run with the same options to resume it, pass --resume_from_checkpoint no to start afresh in this "
            "folder (its checkpoints are then overwritten), or choose another --output_dir"
        )
    for _, key, before, now in changed:
        logger.warning("resuming with --%s %r (the checkpoint's run had %r)", key, now, before)


def saved_log_history(output_dir: str) -> list[dict]:
    """The log history of the run saved in ``output_dir`` (its final ``trainer_state.json``), [] without one."""
    from llama_squad.checkpoints import TRAINER_STATE

    try:
        history = json.loads((Path(output_dir) / TRAINER_STATE).read_text(encoding="utf-8")).get("log_history")
    except (OSError, ValueError, AttributeError):
        return []
    return history if isinstance(history, list) else []


def best_checkpoint(state, config: TrainConfig) -> dict | None:
    """The checkpoint the final weights come from, for the cards: with ``--load_best_model_at_end``, the best one by
    ``--metric_for_best_model`` (its metric, step and value, from the trainer's state: a ``TrainerState`` or its saved
    mapping); None otherwise."""
    get = state.get if isinstance(state, dict) else lambda key: getattr(state, key, None)
    folder, value = get("best_model_checkpoint"), get("best_metric")
    if not config.load_best_model_at_end or not folder or value is None:
        return None
    metric = config.metric_for_best_model or "loss"
    metric = metric if metric.startswith("eval_") else f"eval_{metric}"
    step = Path(folder).name.split("-")[-1]
    return {"metric": metric, "step": step, "value": float(value), "checkpoint": str(folder)}


def saved_state(output_dir: str) -> dict:
    """The trainer's state saved in ``output_dir`` (its final ``trainer_state.json``), {} without one."""
    from llama_squad.checkpoints import TRAINER_STATE

    try:
        state = json.loads((Path(output_dir) / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def save_run_config(resolved: dict, output_dir: str) -> Path:
    """Write the resolved options beside the outputs (``run_config.yaml``)."""
    path = Path(output_dir) / RUN_CONFIG
    atomic_write_text(path, yaml.safe_dump(resolved, sort_keys=False, default_flow_style=False))
    return path


NO_RESUME = ("no", "none", "false")
LATEST = ("latest", "true", "yes")


def named_checkpoint_problem(config: TrainConfig) -> str | None:
    """Why the checkpoint --resume_from_checkpoint names cannot be resumed from (None: it can, or none is named)."""
    from llama_squad.checkpoints import checkpoint_problem

    wanted = config.resume_from_checkpoint
    if wanted is None or str(wanted).lower() in NO_RESUME + LATEST:
        return None
    problem = checkpoint_problem(wanted, config.save_only_model)
    if problem is None:
        return None
    return (
        f"--resume_from_checkpoint {wanted}: cannot resume from it ({problem}); pick another checkpoint, or leave the "
        "option out to take the newest complete one"
    )


def find_checkpoint(config: TrainConfig) -> str | None:
    """The checkpoint to resume from: the one given (which must be complete), else the newest complete one in
    output_dir (torn ones are skipped, logged and moved aside); None for a fresh start. In a distributed run only
    the main process calls it (train.py hands its choice to the others)."""
    from llama_squad.checkpoints import latest_complete_checkpoint

    wanted = config.resume_from_checkpoint
    if wanted is not None and str(wanted).lower() in NO_RESUME:
        return None
    if wanted is not None and str(wanted).lower() not in LATEST:
        problem = named_checkpoint_problem(config)
        if problem:
            raise InputError(problem)
        return str(wanted)
    found = latest_complete_checkpoint(config.output_dir, config.save_only_model)
    return str(found) if found else None


def claim_output_dir(stack, resolved: dict, config: TrainConfig) -> str | None:
    """One run at a time per output_dir (the main process holds the lock until ``stack`` closes); the checkpoint to
    resume from (:func:`find_checkpoint`), trained with the same model options (:func:`check_resume_config`). The main
    process chooses (moving torn checkpoints aside) and tells the others: every process resumes from the same
    checkpoint, or all stop with the same message."""
    from llama_squad.distributed import run_on_main
    from llama_squad.files import output_lock

    def claim() -> str | None:
        stack.enter_context(output_lock(config.output_dir))
        found = find_checkpoint(config)
        if found:
            check_resume_config(resolved, config.output_dir, found)
        return found

    checkpoint = run_on_main(config, claim)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    return checkpoint

"""Fine-tuning with TRL's SFTTrainer: answer-only labels, LoRA/QLoRA, checkpoints and resume, loss plots."""

import dataclasses
import json
import logging
from pathlib import Path

import yaml
from transformers import TrainerCallback  # imported with the config already (TRL's SFTConfig)

from llama_squad.config import PAUSE_POSITIONS, ModelArguments, ScriptArguments, TrainConfig
from llama_squad.files import InputError, atomic_write_text

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.yaml"


def validate(model_args: ModelArguments, script_args: ScriptArguments, config: TrainConfig) -> None:
    """Check the options together before any long work; raise once, naming every problem and its flag."""
    from llama_squad.distributed import fsdp_enabled, sharding_engine
    from llama_squad.models import ModelError, check_model_source
    from llama_squad.tasks.common import dataset_folder_problem

    problems = []
    problem = dataset_folder_problem(script_args.dataset_path)
    if problem:
        problems.append(problem)
    try:
        check_model_source(model_args.model_name_or_path, revision=model_args.model_revision)
    except ModelError as e:
        problems.append(str(e))
    for flag in ("load_in_4bit", "load_in_8bit"):
        if getattr(model_args, flag) and not model_args.use_peft:
            problems.append(f"--{flag} needs --use_peft: a quantized model can only be trained through an adapter")
    if model_args.lora_task_type != "CAUSAL_LM":
        problems.append(f"--lora_task_type {model_args.lora_task_type}: train.py trains causal LMs (CAUSAL_LM)")
    if script_args.push_adapter and not model_args.use_peft:
        problems.append(
            f"--push_adapter {script_args.push_adapter}: there is no adapter without --use_peft; push the full model "
            "with --hub_repo_id instead"
        )
    if config.max_length is None or config.max_length < 16:
        problems.append(f"--max_length {config.max_length}: give the longest example length in tokens (e.g. 1024)")
    positive = {
        "--per_device_train_batch_size": config.per_device_train_batch_size,
        "--per_device_eval_batch_size": config.per_device_eval_batch_size,
        "--gradient_accumulation_steps": config.gradient_accumulation_steps,
        "--lora_r": model_args.lora_r,
        "--max_train_examples": script_args.max_train_examples,
        "--save_steps": config.save_steps if config.save_strategy != "no" else None,
        "--logging_steps": config.logging_steps,
    }
    for flag, value in positive.items():
        if value is not None and not value > 0:
            problems.append(f"{flag} {value}: must be a positive number")
    if script_args.max_eval_examples is not None and script_args.max_eval_examples < 0:
        problems.append(f"--max_eval_examples {script_args.max_eval_examples}: give 0 or more (None: all)")
    if not config.learning_rate > 0:
        problems.append(f"--learning_rate {config.learning_rate}: must be > 0 (e.g. 2e-4 for LoRA)")
    if config.max_steps <= 0 and not config.num_train_epochs > 0:
        problems.append(f"--num_train_epochs {config.num_train_epochs}: must be > 0 (or give --max_steps)")
    if not 0 <= model_args.lora_dropout < 1:
        problems.append(f"--lora_dropout {model_args.lora_dropout}: must be in [0, 1)")
    if not model_args.lora_alpha > 0:
        problems.append(f"--lora_alpha {model_args.lora_alpha}: must be > 0 (commonly 2 x --lora_r)")
    if (config.padding_free or config.packing) and not str(model_args.attn_implementation).startswith(
        "flash_attention"
    ):
        problems.append(
            "--padding_free and --packing need --attn_implementation flash_attention_2 (or 3): other kernels would "
            "let the examples of one row attend to each other"
        )
    if not isinstance(model_args.pause_tokens, int) or model_args.pause_tokens < 0:
        problems.append(f"--pause_tokens {model_args.pause_tokens}: give 0 (none) or a positive number (e.g. 8)")
    if model_args.pause_position not in PAUSE_POSITIONS:
        problems.append(f"--pause_position {model_args.pause_position!r}: choose {' or '.join(PAUSE_POSITIONS)}")
    if model_args.fp16_overflow_guard and not config.fp16:
        problems.append("--fp16_overflow_guard is for float16 training: add --fp16, or drop the guard")
    problem = named_checkpoint_problem(config)
    if problem:
        problems.append(problem)
    from llama_squad.outputs import scores_problem

    problem = scores_problem(config.output_dir, script_args.dataset_path)  # test.py's scores, for the cards
    if problem:
        problems.append(problem)
    optim = getattr(config.optim, "value", config.optim)  # an OptimizerNames once parsed
    if fsdp_enabled(config) and "8bit" in str(optim):
        problems.append(
            f"--optim {optim} with FSDP: bitsandbytes' 8-bit optimizers fail when FSDP saves a checkpoint; "
            "pass --optim adamw_torch (FSDP shards the optimizer state already)"
        )
    engine = sharding_engine(config)
    if engine and config.use_cpu:
        # accelerate (1.16) runs CPU processes as DistributedType.MULTI_CPU, which ignores the FSDP and DeepSpeed
        # settings: the run would be plain DDP over gloo, with whole copies of the model
        problems.append(
            f"--use_cpu with {engine} (the default without a GPU): accelerate shards nothing on the CPU and would "
            "train plain DDP instead; run on GPUs (--use_cpu false), or use configs/accelerate/cpu_2proc.yaml (DDP) "
            "on the CPU"
        )
    if script_args.hub_repo_id and not model_args.use_peft:
        problems.append("--hub_repo_id pushes the merged adapter: it needs --use_peft")
    if problems:
        raise InputError("invalid options:\n  - " + "\n  - ".join(problems))


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
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}: not valid YAML{at}; {fix}") from None
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


def load_training_data(script_args: ScriptArguments, tokenizer, max_length: int, seed: int = 42, pause=None):
    """Tokenized train and validation splits (answer-only labels; validation None when the dataset has none or an
    empty one); examples longer than max_length are dropped.
    With ``pause`` (:class:`llama_squad.pause.PauseTokens`) every example holds the pause tokens, unsupervised.

    ``--max_train_examples`` draws a seeded random sample: the splits are stored in source order (article by article,
    dialogue by dialogue), so their first N rows would cover only a few topics.
    """
    from llama_squad.tasks.common import load_dataset_folder
    from llama_squad.tokenization import tokenize_dataset

    dataset = load_dataset_folder(script_args.dataset_path)
    if "train" not in dataset:
        raise InputError(f"{script_args.dataset_path}: no 'train' split (it has {', '.join(dataset)})")
    train, validation = dataset["train"], dataset.get("validation")  # no validation split: no validation loss
    if script_args.max_train_examples is not None:
        train = train.shuffle(seed=seed).select(range(min(script_args.max_train_examples, len(train))))
    if script_args.max_eval_examples is not None and validation is not None:
        validation = validation.select(range(min(script_args.max_eval_examples, len(validation))))
    try:
        train, dropped = tokenize_dataset(train, tokenizer, max_length, pause=pause)
    except ValueError as e:  # the tokenizer's chat template cannot render or delimit the answers
        raise InputError(f"{script_args.dataset_path}: cannot tokenize the training examples: {e}") from None
    if dropped:
        logger.warning("dropped %d training examples longer than --max_length %d", dropped, max_length)
    if len(train) == 0:
        raise InputError(f"{script_args.dataset_path}: no training example fits --max_length {max_length}")
    if validation is not None and len(validation):
        validation, dropped = tokenize_dataset(validation, tokenizer, max_length, pause=pause)
        if dropped:
            logger.warning("dropped %d validation examples longer than --max_length %d", dropped, max_length)
    return train, (validation if validation is not None and len(validation) else None)


def lora_config(model_args: ModelArguments, trainable_token_indices: list[int] | None = None):
    """The LoRA adapter of ``model_args`` (TRL's ``get_peft_config``): on every linear layer except the output head
    by default; with ``trainable_token_indices`` (the pause tokens) also those rows of the input embedding, and of the
    output layer where it is tied to it, and no other row."""
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if trainable_token_indices:
        config.trainable_token_indices = list(trainable_token_indices)
    return config


def build_trainer(model, tokenizer, config: TrainConfig, train_dataset, eval_dataset, peft_config, pause=None):
    """TRL's SFTTrainer on our pre-tokenized examples, padded by :class:`AnswerOnlyCollator`.

    With ``pause`` (the model's :class:`llama_squad.pause.PauseTokens`), every checkpoint records them too, and the
    adapter saves the pause rows alone (not the whole grown embedding matrices).
    """
    import functools

    import torch
    from trl import SFTTrainer

    from llama_squad.collator import AnswerOnlyCollator

    if eval_dataset is None and config.eval_strategy != "no":
        logger.info("no validation split: validation loss is off")
        config.eval_strategy = "no"
    collator = None  # packing: TRL packs our input_ids + labels and its own collator reads the packed lengths
    if not config.packing:
        multiple = config.pad_to_multiple_of if isinstance(config.pad_to_multiple_of, int) else None
        collator = AnswerOnlyCollator(
            tokenizer.pad_token_id, pad_to_multiple_of=multiple, padding_free=config.padding_free
        )
        # done by the collator: SFTTrainer refuses padding_free with a max_length (which we enforce by dropping
        # longer examples) and with a collator given to it
        config.padding_free = False
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=collator,
        peft_config=peft_config,
    )
    if getattr(peft_config, "trainable_token_indices", None):
        # PEFT saves the whole embedding matrices of a model whose vocabulary grew ("auto"): gigabytes for an 8B
        # model. The trainable tokens hold the rows that were trained; the others are the base model's, and the new
        # rows the mean of them, rebuilt at load time (llama_squad.pause.grow_embeddings).
        peft_model = trainer.model
        peft_model.save_pretrained = functools.partial(peft_model.save_pretrained, save_embedding_layers=False)
        # A tied output layer is wrapped by PEFT too (the same trained rows); TRL's fused LM head reads its
        # ``weight`` (the wrapper gives the trained rows in place) and its ``bias``, which the wrapper lacks.
        head = peft_model.get_output_embeddings()
        if head is not None and not hasattr(head, "bias") and hasattr(head, "original_module"):
            head.bias = getattr(head.original_module, "bias", None)
    if pause is not None:
        trainer.add_callback(_PauseFileCallback(pause))
    if config.fp16:
        # TRL casts a quantized model's adapter weights to bfloat16; float16 mixed precision wants float32 master
        # weights (and GPUs that need float16 may not have bfloat16 at all)
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    return trainer


class _PauseFileCallback(TrainerCallback):
    """Writes ``pause_tokens.json`` into every checkpoint: one can be evaluated as an adapter, prompted as trained."""

    def __init__(self, pause):
        self.pause = pause

    def on_save(self, args, state, control, **kwargs):
        from llama_squad import pause as pause_tokens

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            pause_tokens.save(self.pause, folder)

"""Fine-tuning with TRL's SFTTrainer: answer-only labels, LoRA/QLoRA, checkpoints and resume, loss plots."""

import dataclasses
import logging
from pathlib import Path

from transformers import TrainerCallback  # imported with the config already (TRL's SFTConfig)

from llama_squad.config import PAUSE_POSITIONS, ModelArguments, ScriptArguments, TrainConfig
from llama_squad.files import InputError

logger = logging.getLogger(__name__)


def validate(model_args: ModelArguments, script_args: ScriptArguments, config: TrainConfig, options=None) -> None:
    """Check the options together before any long work; raise once, naming every problem and its flag."""
    from llama_squad.distributed import fsdp_enabled, fsdp_settings, sharding_engine
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
    problems.extend(packing_problems(model_args.attn_implementation, config))
    if not isinstance(model_args.pause_tokens, int) or model_args.pause_tokens < 0:
        problems.append(f"--pause_tokens {model_args.pause_tokens}: give 0 (none) or a positive number (e.g. 8)")
    if model_args.pause_position not in PAUSE_POSITIONS:
        problems.append(f"--pause_position {model_args.pause_position!r}: choose {' or '.join(PAUSE_POSITIONS)}")
    if model_args.fp16_overflow_guard and not config.fp16:
        problems.append("--fp16_overflow_guard is for float16 training: add --fp16, or drop the guard")
    from llama_squad.resume import named_checkpoint_problem

    problem = named_checkpoint_problem(config)
    if problem:
        problems.append(problem)
    from llama_squad.outputs import scores_problem

    problem = scores_problem(config.output_dir, script_args.dataset_path)  # test.py's scores, for the cards
    if problem:
        problems.append(problem)
    problems += task_metric_problems(script_args, config)
    if options is not None and script_args.eval_questions:
        problems += options.problems()
    optim = getattr(config.optim, "value", config.optim)  # an OptimizerNames once parsed
    if fsdp_enabled(config) and "8bit" in str(optim):
        problems.append(
            f"--optim {optim} with FSDP: bitsandbytes' 8-bit optimizers fail when FSDP saves a checkpoint; "
            "pass --optim adamw_torch (FSDP shards the optimizer state already)"
        )
    if fsdp_enabled(config):
        problems += fsdp_problems(*fsdp_settings(config), adapter=model_args.use_peft)
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


def task_metric_problems(script_args: ScriptArguments, config: TrainConfig) -> list[str]:
    """What is wrong with ``--eval_questions`` and a ``--metric_for_best_model`` of the task's own scores."""
    from llama_squad.tasks import get_task
    from llama_squad.tasks.common import dataset_folder_problem, load_dataset_folder

    problems = []
    n, metric = script_args.eval_questions, config.metric_for_best_model
    if n is None or n < 0:
        problems.append(f"--eval_questions {n}: give 0 (the loss only) or a number of validation questions (e.g. 64)")
    if n and config.eval_strategy == "no":
        problems.append(
            f"--eval_questions {n} with --eval_strategy no: evaluate with --eval_strategy steps (or epoch)"
        )
    if not n and (metric is None or metric.removeprefix("eval_") == "loss"):
        return problems
    if dataset_folder_problem(script_args.dataset_path):
        return problems  # said already
    try:
        splits = load_dataset_folder(script_args.dataset_path)
    except (OSError, ValueError):
        return problems  # said when the data is read
    if n and "validation" not in splits:
        problems.append(
            f"--eval_questions {n}: {script_args.dataset_path} has no validation split (it has {', '.join(splits)}) "
            "to ask: rebuild it with create_dataset.py --validation_fraction 0.05, or drop --eval_questions"
        )
    split = next((s for s in splits.values() if len(s)), None)
    if metric is not None and split is not None:
        task = get_task(split[0]["task"])
        name = metric.removeprefix("eval_")
        if name != "loss" and name not in task.headline_metrics:
            problems.append(
                f"--metric_for_best_model {metric}: not a metric of {task.title}; choose loss or one of "
                f"{', '.join(task.headline_metrics)}"
            )
        elif name != "loss" and not n:
            problems.append(f"--metric_for_best_model {metric}: a task metric needs --eval_questions N (e.g. 64)")
    return problems


def task_evaluation(script_args: ScriptArguments, config: TrainConfig, options, tokenizer, pause=None):
    """The task's scores at every evaluation (``--eval_questions N``; None without it): N validation questions drawn
    with ``--seed``, answered with ``options`` (GenerationOptions) in batches of ``--per_device_eval_batch_size``."""
    from llama_squad.evaluation.during_training import TaskEvaluation, sample_questions
    from llama_squad.tasks import get_task
    from llama_squad.tasks.common import load_dataset_folder

    if not script_args.eval_questions:
        return None
    validation = [dict(row) for row in load_dataset_folder(script_args.dataset_path)["validation"]]
    task = get_task(validation[0]["task"])
    questions = sample_questions(task, validation, script_args.eval_questions, config.seed)
    logger.info("every evaluation also answers %d validation questions and scores them", len(questions))
    return TaskEvaluation(questions, tokenizer, options, pause, config.per_device_eval_batch_size)


# The attention implementations that keep the examples of a packed / padding-free row apart (transformers 5.25):
# for sdpa, eager and flex_attention, masking_utils.create_causal_mask builds a block-causal mask from position_ids
# that restart at 0 for each example (find_packed_sequence_indices) when the forward has no attention mask and no KV
# cache (SFTTrainer.compute_loss passes use_cache=False); flash attention runs its variable-length kernel on the
# example boundaries of TRL's collator (cu_seq_lens_q/k). sdpa and eager are measured by tests/test_packing.py on the
# CPU (loss and LoRA gradients equal to the padded batch's); flex_attention and flash attention by its GPU tests.
PACKED_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4")


def packing_problems(
    attn_implementation: str | None, config: TrainConfig, source: str = "--attn_implementation"
) -> list[str]:
    """Why ``--packing`` / ``--padding_free`` would let the examples of one row see each other, if they would.

    ``attn_implementation`` None (the model's default, sdpa for Llama-family models) is checked once the model is
    loaded (:func:`build_trainer`), ``source`` naming where the implementation came from."""
    if not (config.packing or config.padding_free):
        return []
    problems = []
    if attn_implementation is not None and attn_implementation not in PACKED_ATTENTION:
        problems.append(
            f"{source} {attn_implementation} with --packing or --padding_free: transformers builds the "
            "per-example attention mask of a packed row only for sdpa, eager and flex_attention (from position_ids), "
            "and flash_attention_2/3/4 read the example boundaries; with any other implementation the examples of one "
            "row attend to each other. Use --attn_implementation sdpa (or flash_attention_2 on a GPU)"
        )
    if config.packing and config.packing_strategy == "wrapped":
        problems.append(
            "--packing_strategy wrapped cuts examples across rows and lets them attend to each other (TRL keeps no "
            "example boundaries for it): use bfd (the default)"
        )
    return problems


def fsdp_problems(version: int, state_dict_type: str, adapter: bool) -> list[str]:
    """The FSDP settings that save an empty or partial adapter (or model), each with its fix: FSDP1 with an adapter
    (PEFT 0.21 strips only a leading ``_fsdp_wrapped_module.`` from the names, not those of the nested units of
    per-layer wrapping, and saves an adapter with no tensor), and any state dict type but ``FULL_STATE_DICT`` (with
    ``SHARDED_STATE_DICT`` the Trainer's ``save_model`` writes nothing, so that every checkpoint lacks the adapter)."""
    problems = []
    if version == 1 and adapter:
        problems.append(
            "FSDP version 1 with an adapter (--use_peft): PEFT cannot name the LoRA weights of nested FSDP1 units "
            "and would save an adapter with no tensor; use FSDP2: fsdp_version: 2 in the accelerate config (as in "
            'configs/accelerate/fsdp.yaml), accelerate launch --fsdp_version 2, or "version": 2 in --fsdp_config'
        )
    if state_dict_type != "FULL_STATE_DICT":
        problems.append(
            f"FSDP with fsdp_state_dict_type {state_dict_type}: the checkpoints would hold FSDP's own shards and no "
            "adapter or model weights to evaluate or to finish from; use FULL_STATE_DICT: fsdp_state_dict_type: "
            "FULL_STATE_DICT in the accelerate config (as in configs/accelerate/fsdp.yaml), accelerate launch "
            '--fsdp_state_dict_type FULL_STATE_DICT, or "state_dict_type": "FULL_STATE_DICT" in --fsdp_config'
        )
    return problems


def check_pushes(script_args: ScriptArguments, config: TrainConfig) -> None:
    """Fail fast unless every push asked for can be made (the main process asks the Hub): the merged model
    (``--hub_repo_id``, which implies ``--merge``), the adapter alone (``--push_adapter``), TRL's own push of the
    adapter and checkpoints (``--push_to_hub`` to ``--hub_model_id``)."""
    from llama_squad.distributed import run_on_main
    from llama_squad.export import check_hub_access

    if script_args.hub_repo_id:
        script_args.merge = True
        run_on_main(config, lambda: check_hub_access(script_args.hub_repo_id))
    if script_args.push_adapter:
        run_on_main(config, lambda: check_hub_access(script_args.push_adapter, option="--push_adapter"))
    if config.push_to_hub:
        repo = config.hub_model_id or Path(config.output_dir).absolute().name
        run_on_main(config, lambda: check_hub_access(repo, option="--push_to_hub", token=config.hub_token))


@dataclasses.dataclass
class LoadedModel:
    """The model to train and what it was loaded with."""

    path: str  # the folder or Hub id it was loaded from (the embedded model's cache folder)
    model: object
    tokenizer: object
    pause: object = None  # llama_squad.pause.PauseTokens, or None
    pause_ids: list[int] | None = None  # their token ids: the embedding rows trained beside LoRA


def load_for_training(model_args: ModelArguments, config: TrainConfig) -> LoadedModel:
    """The model and tokenizer (the embedded default is converted from GGUF once, then cached: by the first process of
    each machine, which the others wait for), guarded against float16 overflow if asked, with the pause tokens added
    (new special tokens whose rows start as the mean of the others)."""
    from llama_squad import models
    from llama_squad import pause as pause_tokens
    from llama_squad.distributed import shards_parameters
    from llama_squad.stability import add_fp16_overflow_guard

    with config.main_process_first(desc="preparing the model"):
        path = models.resolve_model_path(model_args.model_name_or_path, cache_dir=model_args.model_cache_dir)
    tokenizer = models.load_tokenizer(
        path, trust_remote_code=config.trust_remote_code, revision=model_args.model_revision
    )
    model = models.load_model(
        path, model_args, trust_remote_code=config.trust_remote_code, sharded=shards_parameters(config)
    )
    if model_args.fp16_overflow_guard:
        add_fp16_overflow_guard(model)
    pause = pause_tokens.PauseTokens.of(model_args.pause_tokens, model_args.pause_position)
    output = model.get_output_embeddings()
    if pause and shards_parameters(config) and getattr(output, "weight", None) is model.get_input_embeddings().weight:
        raise InputError(
            f"--pause_tokens {model_args.pause_tokens} with FSDP or DeepSpeed ZeRO-3: {model_args.model_name_or_path} "
            "ties its output layer to its input embedding (tie_word_embeddings), and the pause rows PEFT trains in "
            "both cannot be sharded (accelerate 1.16 puts the two in different FSDP groups and fails; under ZeRO-3 "
            "TRL 1.16's fused LM head cannot gather them); train with DDP (configs/accelerate/ddp.yaml) or on one "
            "GPU, or drop --pause_tokens"
        )
    pause_ids = pause_tokens.prepare_model(model, tokenizer, pause) if pause else None
    return LoadedModel(path, model, tokenizer, pause, pause_ids)


def train_or_finish(trainer, config: TrainConfig, checkpoint: str | None, resolved: dict, adapter: bool) -> int | None:
    """Train from ``checkpoint`` (saving the resolved config beside the checkpoints first), then save the adapter (or
    full model: every process takes part, FSDP and ZeRO-3 gather the shards, the main one writes) and the trainer's
    state. Unless ``checkpoint`` is the run's last step: a finished run re-run trains nothing, and only a final save a
    crash left missing is taken from that checkpoint. Returns the finished run's step, or None when it trained."""
    from llama_squad import outputs
    from llama_squad.distributed import describe_batch
    from llama_squad.resume import save_run_config

    main_process = config.process_index == 0
    planned = outputs.planned_steps(config, len(trainer.train_dataset))
    finished = outputs.finished_step(checkpoint, planned)
    if finished is not None:
        logger.info(
            "training finished at step %d of %d (%s): nothing to train; writing only what is missing",
            finished, planned, checkpoint,
        )  # fmt: skip
        if main_process:
            outputs.restore_final_save(config.output_dir, checkpoint, adapter=adapter)
        return finished
    if main_process:
        path = save_run_config(resolved, config.output_dir)
        logger.info("the resolved options are in %s (--log_level debug logs them)", path)
    logger.info("%s", describe_batch(config))
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(config.output_dir)  # FSDP: FULL_STATE_DICT (validate refuses the others), gathered whole
    trainer.save_state()
    return None


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


def build_trainer(
    model, tokenizer, config: TrainConfig, train_dataset, eval_dataset, peft_config, pause=None, task_evaluation=None
):
    """TRL's SFTTrainer on our pre-tokenized examples, padded by :class:`AnswerOnlyCollator`, or laid out as one row
    per batch (``padding_free``: our collator; ``packing``: TRL packs the examples into rows of ``max_length`` and its
    collator lays them out); refused where the model's attention would let the examples of a row see each other.

    With ``pause`` (the model's :class:`llama_squad.pause.PauseTokens`), every checkpoint records them too, and the
    adapter saves the pause rows alone (not the whole grown embedding matrices). With ``task_evaluation``
    (:func:`task_evaluation`), every evaluation also logs the task's scores.
    """
    import functools

    import torch
    from trl import SFTTrainer

    from llama_squad.collator import AnswerOnlyCollator

    attention = getattr(model.config, "_attn_implementation", None) or "unknown"
    problems = packing_problems(attention, config, source="the model's attention implementation")
    if problems:  # the model's default (no --attn_implementation given) is known only now
        raise InputError("invalid options:\n  - " + "\n  - ".join(problems))
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
    trainer_class = SFTTrainer
    if task_evaluation is not None:
        from llama_squad.distributed import shards_parameters
        from llama_squad.evaluation.during_training import trainer_class as with_task_metrics

        trainer_class = with_task_metrics(SFTTrainer)
    trainer = trainer_class(
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
    if task_evaluation is not None:
        trainer.task_evaluation, trainer.sharded_model = task_evaluation, shards_parameters(config)
    _keep_adapter_dtypes_on_resume(trainer)
    if pause is not None:
        trainer.add_callback(_PauseFileCallback(pause))
    if config.fp16:
        # TRL casts a quantized model's adapter weights to bfloat16; float16 mixed precision wants float32 master
        # weights (and GPUs that need float16 may not have bfloat16 at all)
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    return trainer


def _keep_adapter_dtypes_on_resume(trainer) -> None:
    """Resume with the adapter in the dtype it trains in. transformers' Trainer reloads a PEFT model's adapter with
    ``load_adapter``, whose ``autocast_adapter_dtype=True`` turns the bfloat16 adapter TRL trains on a 4-bit model into
    float32: the resumed steps would run in another dtype than an uninterrupted run's (tests/test_qlora.py). The
    trainable parameters go back to their dtype after loading: exact, the checkpoint holds them in that dtype."""
    load = trainer._load_from_checkpoint

    def load_keeping_dtypes(resume_from_checkpoint, model=None):
        target = trainer.model if model is None else model
        dtypes = {name: p.dtype for name, p in target.named_parameters() if p.requires_grad}
        load(resume_from_checkpoint, model)
        for name, param in target.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])

    trainer._load_from_checkpoint = load_keeping_dtypes


class _PauseFileCallback(TrainerCallback):
    """Writes ``pause_tokens.json`` into every checkpoint: one can be evaluated as an adapter, prompted as trained."""

    def __init__(self, pause):
        self.pause = pause

    def on_save(self, args, state, control, **kwargs):
        from llama_squad import pause as pause_tokens

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            pause_tokens.save(self.pause, folder)

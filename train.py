"""Fine-tune a chat model on a create_dataset.py dataset with TRL's SFTTrainer: LoRA or QLoRA, loss only on the
answer tokens and the token that ends the assistant turn.

A recipe, with command-line overrides:

    python train.py --config configs/smoke.yaml
    python train.py --config configs/llama3_8b_qlora.yaml --dataset_path data/squad_v2 --output_dir output/llama3

Or everything on the command line (the embedded SmolLM2-135M-Instruct by default):

    python train.py --dataset_path data/squad_v2_dev_split --output_dir output/smollm2 \
        --num_train_epochs 2 --per_device_train_batch_size 16 --lora_r 64 --merge

With 8 learned pause tokens before every answer (their embedding rows trained beside LoRA; test.py prompts with them):

    python train.py --config configs/smollm2_dev_split.yaml --pause_tokens 8 --output_dir output/smollm2-pause8

On several GPUs or machines, the same command under accelerate (DDP, FSDP, DeepSpeed ZeRO-3; see the README section
"Several GPUs / several machines" and configs/accelerate/):

    accelerate launch --config_file configs/accelerate/ddp.yaml train.py --config configs/llama3_8b_qlora.yaml

Re-running the same command resumes from the newest complete checkpoint in output_dir (a checkpoint torn by a
crash is skipped and moved aside); a second run on the same output_dir stops at once. The adapter, tokenizer and chat
template land in output_dir (with --pause_tokens N, pause_tokens.json too), with run_config.yaml, loss.png and
(with --merge) output_dir/merged; --hub_repo_id USER/NAME pushes the merged model and its model card, --push_adapter
USER/NAME the adapter alone (python -m llama_squad.export does both later, with the scores of test.py in the cards).
In a distributed run the main process alone writes, merges and pushes, the first one of each machine converts the
embedded model and tokenizes before the others reuse its work, and all but the first one of each machine log
warnings only.
"""

import contextlib
import logging
import sys
from pathlib import Path

from llama_squad.cli import exit_code_of, parse_dataclasses, setup_logging
from llama_squad.config import ModelArguments, ScriptArguments, TrainConfig

logger = logging.getLogger("train")


def main(argv: list[str] | None = None) -> int:
    model_args, script_args, config = parse_dataclasses([ModelArguments, ScriptArguments, TrainConfig], argv)
    setup_logging()
    from llama_squad.export import HubAccessError

    try:
        train(model_args, script_args, config)
    except Exception as e:  # the user's input, setup or disk: one line naming it and the fix; a bug: its traceback
        return exit_code_of(e, logger.error, where=config.output_dir, also=(HubAccessError,))
    return 0


def train(model_args: ModelArguments, script_args: ScriptArguments, config: TrainConfig) -> None:
    from llama_squad import distributed, export, models, outputs, training
    from llama_squad import pause as pause_tokens
    from llama_squad.files import output_lock
    from llama_squad.stability import add_fp16_overflow_guard

    # 0. One process, or one of several (accelerate launch / torchrun): the others log warnings only.
    distributed.setup_process_logging(config)
    main_process = config.process_index == 0  # writes run_config.yaml, the adapter, plots; merges and pushes

    # 1. Check the options, the model source and the Hub before any long work; log the resolved config.
    training.validate(model_args, script_args, config)
    if script_args.hub_repo_id:
        script_args.merge = True
        distributed.run_on_main(config, lambda: export.check_hub_access(script_args.hub_repo_id))
    if script_args.push_adapter:  # the adapter alone
        distributed.run_on_main(
            config, lambda: export.check_hub_access(script_args.push_adapter, option="--push_adapter")
        )
    if config.push_to_hub:  # TRL's own push of the adapter (and checkpoints) to --hub_model_id
        repo = config.hub_model_id or Path(config.output_dir).absolute().name
        distributed.run_on_main(
            config, lambda: export.check_hub_access(repo, option="--push_to_hub", token=config.hub_token)
        )
    resolved = training.resolved_config(model_args, script_args, config)
    logger.info("resolved config:\n%s", training.yaml.safe_dump(resolved, sort_keys=False))

    with contextlib.ExitStack() as stack:
        # 2. One run at a time per output_dir (the main process holds the lock); resume from the newest complete
        # checkpoint, with the same model options. The main process chooses (moving torn checkpoints aside) and
        # tells the others: every process resumes from the same checkpoint, or all stop with the same message.
        def claim_output_dir() -> str | None:
            stack.enter_context(output_lock(config.output_dir))
            found = training.find_checkpoint(config)
            if found:
                training.check_resume_config(resolved, config.output_dir, found)
            return found

        checkpoint = distributed.run_on_main(config, claim_output_dir)
        if checkpoint:
            logger.info("resuming from %s", checkpoint)

        # 3. The model and tokenizer (the embedded default is converted from GGUF once, then cached: by the first
        # process of each machine, which the others wait for).
        with config.main_process_first(desc="preparing the model"):
            model_path = models.resolve_model_path(model_args.model_name_or_path, cache_dir=model_args.model_cache_dir)
        tokenizer = models.load_tokenizer(
            model_path, trust_remote_code=config.trust_remote_code, revision=model_args.model_revision
        )
        model = models.load_model(
            model_path,
            model_args,
            trust_remote_code=config.trust_remote_code,
            sharded=distributed.shards_parameters(config),
        )
        if model_args.fp16_overflow_guard:
            add_fp16_overflow_guard(model)
        # Pause tokens: new special tokens, their embedding rows (the mean of the others to start with).
        pause = pause_tokens.PauseTokens.of(model_args.pause_tokens, model_args.pause_position)
        pause_ids = pause_tokens.prepare_model(model, tokenizer, pause) if pause else None

        # 4. Answer-only labels (never on the pause tokens); examples that do not fit max_length are dropped and
        # counted. The first process of each machine tokenizes first; the others read its cached result.
        with config.main_process_first(desc="tokenizing"):
            train_data, eval_data = training.load_training_data(
                script_args, tokenizer, config.max_length, config.seed, pause=pause
            )
        logger.info("training on %d examples, validating on %d", len(train_data), len(eval_data or []))

        # 5. Train (saving the resolved config beside the checkpoints first), unless the checkpoint to resume from
        # is the run's last step: a finished run re-run changes nothing.
        peft_config = training.lora_config(model_args, pause_ids) if model_args.use_peft else None
        trainer = training.build_trainer(model, tokenizer, config, train_data, eval_data, peft_config, pause)
        planned = outputs.planned_steps(config, len(trainer.train_dataset))
        finished = outputs.finished_step(checkpoint, planned)
        if finished is None:
            if main_process:
                training.save_run_config(resolved, config.output_dir)
            logger.info("%s", distributed.describe_batch(config))
            trainer.train(resume_from_checkpoint=checkpoint)
            # Save the adapter (or full model): every process takes part (FSDP and ZeRO-3 gather the shards), the
            # main one writes.
            if trainer.is_fsdp_enabled:  # whole adapter weights, loadable without FSDP (checkpoints stay sharded)
                trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
            trainer.save_model(config.output_dir)
            trainer.save_state()
        else:
            logger.info(
                "training finished at step %d of %d (%s): nothing to train; writing only what is missing",
                finished, planned, checkpoint,
            )  # fmt: skip
            if main_process:
                outputs.restore_final_save(config.output_dir, checkpoint, adapter=model_args.use_peft)
        if not main_process:
            return

        # 6. Tokenizer, pause tokens, loss plot, merged model, model cards, pushes (main process only).
        run = outputs.RunOutputs(
            config.output_dir, model_path, model_args, script_args, resolved, len(train_data), pause,
            trust_remote_code=config.trust_remote_code,
        )  # fmt: skip
        log_history = trainer.state.log_history if finished is None else training.saved_log_history(config.output_dir)
        for path in outputs.write_outputs(run, tokenizer, log_history, only_missing=finished is not None):
            if path.name in (outputs.LOSS_PLOT, outputs.MERGED_DIR):
                logger.info("wrote %s%s", path, " (merged model)" if path.name == outputs.MERGED_DIR else "")
    logger.info(
        "wrote %s (adapter, tokenizer, %srun_config.yaml, loss.png)",
        config.output_dir,
        f"{pause_tokens.PAUSE_FILE}, " if pause else "",
    )


if __name__ == "__main__":
    sys.exit(main())

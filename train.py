"""Fine-tune a chat model on a create_dataset.py dataset with TRL's SFTTrainer: LoRA or QLoRA, loss only on the
answer tokens and the token that ends the assistant turn.

A recipe, with command-line overrides:

    python train.py --config configs/smoke.yaml
    python train.py --config configs/llama3_8b_qlora.yaml --dataset_path data/squad_v2 --output_dir output/llama3

Or everything on the command line (the embedded SmolLM2-135M-Instruct by default):

    python train.py --dataset_path data/squad_v2_dev_split --output_dir output/smollm2 \
        --num_train_epochs 2 --per_device_train_batch_size 16 --lora_r 64 --merge

Re-running the same command resumes from the newest complete checkpoint in output_dir (a checkpoint torn by a
crash is skipped and moved aside); a second run on the same output_dir stops at once. The adapter, tokenizer and chat
template land in output_dir, with run_config.yaml, loss.png and (with --merge) output_dir/merged;
--hub_repo_id USER/NAME pushes the merged model and its model card.
"""

import contextlib
import logging
import os
import sys
from pathlib import Path

from llama_squad.cli import parse_dataclasses, setup_logging
from llama_squad.config import ModelArguments, ScriptArguments, TrainConfig

logger = logging.getLogger("train")


def main(argv: list[str] | None = None) -> int:
    model_args, script_args, config = parse_dataclasses([ModelArguments, ScriptArguments, TrainConfig], argv)
    setup_logging()
    from llama_squad.export import HubAccessError
    from llama_squad.io import InputError

    try:
        train(model_args, script_args, config)
    except (InputError, HubAccessError) as e:  # the user's input or setup: the message names it and the fix
        logger.error("%s", e)
        return 1
    return 0


def train(model_args: ModelArguments, script_args: ScriptArguments, config: TrainConfig) -> None:
    from llama_squad import export, models, training
    from llama_squad.io import output_lock
    from llama_squad.plotting import plot_losses
    from llama_squad.stability import add_fp16_overflow_guard

    # 1. Check the options, the model source and the Hub before any long work; log the resolved config.
    training.validate(model_args, script_args, config)
    if script_args.hub_repo_id:
        export.check_hub_access(script_args.hub_repo_id)
        script_args.merge = True
    if config.push_to_hub:  # TRL's own push of the adapter (and checkpoints) to --hub_model_id
        repo = config.hub_model_id or Path(config.output_dir).absolute().name
        export.check_hub_access(repo, option="--push_to_hub", token=config.hub_token)
    resolved = training.resolved_config(model_args, script_args, config)
    logger.info("resolved config:\n%s", training.yaml.safe_dump(resolved, sort_keys=False))

    # 2. One run at a time per output_dir; resume from the newest complete checkpoint, with the same model options.
    main_process = int(os.environ.get("RANK", "0")) == 0
    with output_lock(config.output_dir) if main_process else contextlib.nullcontext():
        checkpoint = training.find_checkpoint(config)
        if checkpoint:
            training.check_resume_config(resolved, config.output_dir, checkpoint)
            logger.info("resuming from %s", checkpoint)

        # 3. The model and tokenizer (the embedded default is converted from GGUF once, then cached).
        model_path = models.resolve_model_path(model_args.model_name_or_path, cache_dir=script_args.model_cache_dir)
        tokenizer = models.load_tokenizer(model_path, trust_remote_code=config.trust_remote_code)
        model = models.load_model(
            model_path,
            dtype=model_args.dtype,
            quantization=model_args.quantization,
            trust_remote_code=config.trust_remote_code,
            attn_implementation=model_args.attn_implementation,
        )
        if model_args.fp16_overflow_guard:
            add_fp16_overflow_guard(model)

        # 4. Answer-only labels; examples that do not fit max_length are dropped and counted.
        train_data, eval_data = training.load_training_data(script_args, tokenizer, config.max_length, config.seed)
        logger.info("training on %d examples, validating on %d", len(train_data), len(eval_data or []))

        # 5. Train (saving the resolved config beside the checkpoints first).
        training.save_run_config(resolved, config.output_dir)
        peft_config = training.lora_config(model_args) if model_args.use_peft else None
        trainer = training.build_trainer(model, tokenizer, config, train_data, eval_data, peft_config)
        trainer.train(resume_from_checkpoint=checkpoint)

        # 6. Save the adapter (or full model), tokenizer and chat template; draw the losses.
        trainer.save_model(config.output_dir)
        tokenizer.save_pretrained(config.output_dir)
        trainer.save_state()
        if plot_losses(
            trainer.state.log_history, Path(config.output_dir) / "loss.png", title=Path(config.output_dir).name
        ):
            logger.info("wrote %s", Path(config.output_dir) / "loss.png")

        # 7. Merge the adapter into the base model, write the model card, push.
        card = dict(
            base_model=model_args.model_name_or_path,
            dataset_path=script_args.dataset_path,
            config=resolved["training"] | {"model": resolved["model"]},
            metrics=export.read_metrics(config.output_dir),
            train_examples=len(train_data),
        )
        if script_args.merge and model_args.use_peft:
            merge_dtype = model_args.dtype if script_args.merge_dtype == "auto" else script_args.merge_dtype
            merged = export.merge_adapter(
                model_path,
                config.output_dir,
                Path(config.output_dir) / "merged",
                models.resolve_dtype(merge_dtype),
                tokenizer,
            )
            export.write_model_card(merged, **card)
            if script_args.hub_repo_id:
                export.push_folder(merged, script_args.hub_repo_id)
            logger.info("wrote %s (merged model)", merged)
        export.write_model_card(config.output_dir, **card)
    logger.info("wrote %s (adapter, tokenizer, run_config.yaml, loss.png)", config.output_dir)


if __name__ == "__main__":
    sys.exit(main())

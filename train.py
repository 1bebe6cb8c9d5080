r"""Fine-tune a chat model on a create_dataset.py dataset with TRL's SFTTrainer: LoRA or QLoRA, loss only on the
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

import yaml

from llama_squad.cli import exit_code_of, parse_dataclasses, setup_logging
from llama_squad.config import ModelArguments, ScriptArguments, TrainConfig
from llama_squad.generation import GenerationOptions

logger = logging.getLogger("train")


ARGUMENTS = [ModelArguments, ScriptArguments, TrainConfig, GenerationOptions]  # the options, in --help's order


def main(argv: list[str] | None = None) -> int:
    model_args, script_args, config, options = parse_dataclasses(ARGUMENTS, argv, description=__doc__)
    setup_logging(logging.DEBUG if config.log_level == "debug" else logging.INFO)  # debug: the resolved options too
    from llama_squad.export import HubAccessError

    try:
        train(model_args, script_args, config, options)
    except Exception as e:  # the user's input, setup or disk: one line naming it and the fix; a bug: its traceback
        return exit_code_of(e, logger.error, where=config.output_dir, also=(HubAccessError,))
    return 0


def train(
    model_args: ModelArguments,
    script_args: ScriptArguments,
    config: TrainConfig,
    options: GenerationOptions | None = None,
) -> None:
    from llama_squad import distributed, outputs, resume, training

    # 0. One process, or one of several (accelerate launch / torchrun): the others log warnings only.
    distributed.setup_process_logging(config)

    # 1. Check the options, the model source, the scores for the cards and the Hub before any long work.
    training.validate(model_args, script_args, config, options)
    training.check_pushes(script_args, config)
    resolved = resume.resolved_config(model_args, script_args, config)
    logger.debug("resolved config:\n%s", yaml.safe_dump(resolved, sort_keys=False))  # run_config.yaml holds it

    with contextlib.ExitStack() as stack:
        # 2. One run at a time per output_dir; resume from the newest complete checkpoint, with the same model.
        checkpoint = resume.claim_output_dir(stack, resolved, config)

        # 3. The model and tokenizer, with the pause tokens if asked for.
        loaded = training.load_for_training(model_args, config)

        # 4. Answer-only labels (never on the pause tokens); examples that do not fit max_length are dropped and
        # counted. The first process of each machine tokenizes first; the others read its cached result.
        with config.main_process_first(desc="tokenizing"):
            train_data, eval_data = training.load_training_data(
                script_args, loaded.tokenizer, config.max_length, config.seed, pause=loaded.pause
            )
        logger.info("training on %d examples, validating on %d", len(train_data), len(eval_data or []))

        # 5. Train and save, unless the checkpoint is the run's last step (a finished run re-run trains nothing);
        # with --eval_questions every evaluation also scores N validation questions answered as test.py would.
        peft_config = training.lora_config(model_args, loaded.pause_ids) if model_args.use_peft else None
        task_scores = training.task_evaluation(script_args, config, options, loaded.tokenizer, loaded.pause)
        trainer = training.build_trainer(
            loaded.model, loaded.tokenizer, config, train_data, eval_data, peft_config, loaded.pause, task_scores
        )
        finished = training.train_or_finish(trainer, config, checkpoint, resolved, adapter=model_args.use_peft)
        if config.process_index != 0:  # the main process alone writes, merges and pushes
            return

        # 6. Tokenizer, pause tokens, loss plot, merged model, model cards, pushes: what is missing, if finished.
        state = trainer.state if finished is None else resume.saved_state(config.output_dir)
        run = outputs.RunOutputs(
            config.output_dir, loaded.path, model_args, script_args, resolved, len(train_data), loaded.pause,
            trust_remote_code=config.trust_remote_code, best=resume.best_checkpoint(state, config),
        )  # fmt: skip
        history = trainer.state.log_history if finished is None else resume.saved_log_history(config.output_dir)
        for path in outputs.write_outputs(run, loaded.tokenizer, history, only_missing=finished is not None):
            if path.name in (outputs.LOSS_PLOT, outputs.MERGED_DIR):
                logger.info("wrote %s%s", path, " (merged model)" if path.name == outputs.MERGED_DIR else "")
    pauses = "pause_tokens.json, " if loaded.pause else ""
    logger.info("wrote %s (adapter, tokenizer, %srun_config.yaml, loss.png)", config.output_dir, pauses)


if __name__ == "__main__":
    sys.exit(main())

"""Answer the test split of a create_dataset.py dataset in batches and score every answer: one results row per
question in OUTPUT_DIR/results.csv, the run's metrics in OUTPUT_DIR/metrics.json.

    python test.py --dataset_path data/squad_v2_dev_split --adapter_path output/smollm2 \
        --output_dir output/smollm2/eval
    python test.py --dataset_path data/squad_v2_dev_split --model_name_or_path output/smollm2/merged \
        --output_dir eval/merged
    python test.py --dataset_path data/squad_v2_dev_split --output_dir eval/zero_shot --limit 200   # the untuned model

Re-running the same command after a crash or Ctrl-C resumes where it stopped. OUTPUT_DIR/run.json records what
defines the results (model and adapter fingerprints, dataset fingerprint, split, --limit, generation options): a
re-run with other settings refuses to add to them (--overwrite starts again), and a larger --limit extends them.
Two runs never share an OUTPUT_DIR at once: the second stops at once.
"""

import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from llama_squad.cli import exit_code_of, parse_dataclasses, setup_logging
from llama_squad.config import ModelLoadingArguments
from llama_squad.generation import GenerationOptions

logger = logging.getLogger("test")


@dataclass
class TestArguments:
    """What to evaluate (the model: --model_name_or_path and the other loading options, as in train.py), on what, and
    where the results go."""

    dataset_path: str = field(metadata={"help": "A dataset folder written by create_dataset.py."})
    output_dir: str = field(metadata={"help": "results.csv and metrics.json are written here."})
    adapter_path: str | None = field(
        default=None, metadata={"help": "A LoRA adapter folder (train.py's output_dir) to apply to the model."}
    )
    merge_adapter: bool = field(
        default=True,
        metadata={
            "help": "Fold the adapter into the weights before generating: faster, same answers up to rounding "
            "(never into a --load_in_4bit or --load_in_8bit model)."
        },
    )
    allow_base_mismatch: bool = field(
        default=False,
        metadata={
            "help": "Apply --adapter_path even to another base model than the one it was trained on (a warning "
            "instead of an error)."
        },
    )
    split: str = field(default="test", metadata={"help": "Which split to answer."})
    limit: int | None = field(default=None, metadata={"help": "Answer only the first N questions (quick runs)."})
    batch_size: int = field(default=32, metadata={"help": "Questions generated together (sorted by prompt length)."})
    seed: int = field(default=42, metadata={"help": "Seed for sampling."})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Discard the results already in output_dir (made with other settings) and start again."},
    )

    def problems(self) -> list[str]:
        """What is wrong with these options, one line per option (empty when they are fine)."""
        problems = []
        if self.limit is not None and self.limit < 1:
            problems.append(f"--limit {self.limit}: give a positive number of questions, or leave it out for all")
        if self.batch_size < 1:
            problems.append(f"--batch_size {self.batch_size}: give a positive number (e.g. 32)")
        return problems


def main(argv: list[str] | None = None) -> int:
    args, model_args, options = parse_dataclasses([TestArguments, ModelLoadingArguments, GenerationOptions], argv)
    setup_logging()
    try:
        evaluate(args, model_args, options)
    except Exception as e:  # the user's input or disk: one line naming it and the fix; a bug: its traceback
        return exit_code_of(e, logger.error, where=args.output_dir)
    return 0


def evaluate(args: TestArguments, model_args: ModelLoadingArguments, options: GenerationOptions) -> None:
    import torch
    from accelerate import PartialState

    from llama_squad import distributed, generation, models, results
    from llama_squad import pause as pause_tokens
    from llama_squad.files import InputError, output_lock
    from llama_squad.summary import constraint_label, format_table, metrics_table, run_name
    from llama_squad.tasks import get_task

    # 1. Check the options, the questions and the model's files before loading anything heavy.
    problems = args.problems() + options.problems()
    if problems:
        raise InputError("invalid options:\n  - " + "\n  - ".join(problems))
    examples = generation.load_examples(args.dataset_path, args.split, args.limit)
    models.check_model_source(model_args.model_name_or_path, revision=model_args.model_revision)
    if args.adapter_path is not None:
        models.check_adapter(args.adapter_path)
        models.check_adapter_base(
            args.adapter_path, model_args.model_name_or_path, model_args.model_revision, args.allow_base_mismatch
        )
    pause_tokens.check_file(args.adapter_path or model_args.model_name_or_path)
    settings = run_settings(args, model_args, options, examples[0]["task"])
    output_dir = Path(args.output_dir)
    output_csv = output_dir / "results.csv"
    task = get_task(examples[0]["task"])

    # One process, or one of `accelerate launch`'s (torchrun's): each answers its share of the questions. Without
    # CUDA, several processes talk over gloo, which accelerate uses only when asked for the CPU.
    distributed_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    state = PartialState(cpu=distributed_cpu)
    rank, processes = state.process_index, state.num_processes
    columns = results.result_columns(task)
    distributed.quiet_replicas(processes, rank, state.is_local_main_process)
    with contextlib.ExitStack() as stack:  # 2. One run at a time per folder (the main process holds the lock).
        distributed.run_on_main(state, lambda: stack.enter_context(output_lock(output_dir)))
        # Resume only results of these settings.
        results.check_resume(output_dir, settings, len(examples), args.overwrite)
        # The rows already there: only questions of this run (a larger --limit extends a run), never another row.
        example_ids = [str(ex["id"]) for ex in examples]
        done = set() if args.overwrite else results.answered_ids(output_dir, columns, example_ids)
        # a contiguous block each: the questions that share a prompt prefix (one dialogue turn) stay together
        mine = examples[rank * len(examples) // processes : (rank + 1) * len(examples) // processes]
        todo = [ex for ex in mine if str(ex["id"]) not in done]

        # 3. The model (base + adapter, merged, or the embedded default), if anything is left to answer.
        generator = None
        if todo:
            device_map = {"": state.device} if processes > 1 and state.device.type == "cuda" else None
            generator = generation.load_generator(
                model_args,
                options,
                adapter_path=args.adapter_path,
                merge_adapter=args.merge_adapter,
                seed=args.seed,
                device_map=device_map,
            )

        # 4. Record the settings, then generate in batches, appending scored rows to results.csv (to this
        # process's shard in a distributed run).
        if state.is_main_process:
            info = dict(
                limit=args.limit,
                dataset_path=args.dataset_path,
                model_name_or_path=model_args.model_name_or_path,
                adapter_path=args.adapter_path,
                batch_size=args.batch_size,
                processes=processes,
            )
            results.start_run(output_dir, settings, len(examples), info, overwrite=args.overwrite)
        state.wait_for_everyone()  # the old results are gone (--overwrite) before any process writes
        own_csv = output_csv if processes == 1 else results.shard_path(output_dir, rank)
        answered, seconds = generation.run_generation(
            generator, mine, own_csv, args.batch_size, progress=state.is_main_process, skip_ids=done
        )
        if answered:
            logger.info("answered %d questions in %.1f s (%.2f questions/s)", answered, seconds, answered / seconds)
        state.wait_for_everyone()
        if not state.is_main_process:
            return

        # 5. One results.csv (the shards merged in question order), and the metrics of exactly its rows.
        if processes > 1 or results.run_files(output_dir) != [output_csv]:
            results.merge_shards(output_dir, columns, example_ids)
        rows = results.read_results(output_csv)
        metrics = results.summarize(rows)
        generation.save_metrics({"task": task.name, **metrics}, output_dir / "metrics.json")  # export checks it
    row = {"task": rows["task"].iloc[0], "constrain": constraint_label(rows), **metrics}
    print(format_table(metrics_table({run_name(output_csv): row})))
    logger.info("wrote %s and %s", output_csv, output_dir / "metrics.json")


def run_settings(
    args: TestArguments, model_args: ModelLoadingArguments, options: GenerationOptions, task: str
) -> dict:
    """What defines the results rows, compared on a resume: the model's and adapter's weights, the questions and
    how they are answered. Paths are not compared (a moved folder is the same model); the batch size is free.
    ``quantization`` is recorded as before --load_in_4bit / --load_in_8bit (None, "4bit", "8bit"): older run.json
    files stay comparable."""
    from dataclasses import asdict

    from llama_squad import generation, models

    decoding = asdict(options)
    quantization = models.quantization_name(model_args)
    if options.do_sample:
        decoding["seed"] = args.seed
    else:  # greedy: sampling options and the seed change nothing
        for name in ("temperature", "top_p", "top_k"):
            decoding.pop(name)
    return {
        "task": task,
        "dataset": {"fingerprint": generation.dataset_fingerprint(args.dataset_path, args.split), "split": args.split},
        "model": models.model_fingerprint(model_args.model_name_or_path, model_args.model_revision),
        "adapter": models.adapter_fingerprint(args.adapter_path) if args.adapter_path else None,
        "merge_adapter": bool(args.adapter_path) and args.merge_adapter and not quantization,
        "dtype": str(models.resolve_dtype(model_args.dtype)).removeprefix("torch."),
        "quantization": quantization,
        "attn_implementation": model_args.attn_implementation,
        "generation": decoding,
    }


if __name__ == "__main__":
    sys.exit(main())

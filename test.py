r"""Answer the test split of a create_dataset.py dataset in batches and score every answer: one results row per
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
    no_answer_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Abstain where the no-answer probability is above this threshold, answer where it is not (the "
            "scores under it go beside the greedy ones in metrics.json)."
        },
    )
    calibrate_on: str | None = field(
        default=None,
        metadata={
            "help": "Choose the no-answer threshold on this split (e.g. validation: answered with the same settings "
            "into OUTPUT_DIR/calibration) by the official search for the best F1, and apply it to --split."
        },
    )

    def problems(self) -> list[str]:
        """What is wrong with these options, one line per option (empty when they are fine)."""
        problems = []
        threshold = self.no_answer_threshold
        if threshold is not None and not 0 <= threshold <= 1:
            problems.append(f"--no_answer_threshold {threshold}: give a probability in [0, 1] (e.g. 0.5)")
        if threshold is not None and self.calibrate_on:
            problems.append(
                "--no_answer_threshold and --calibrate_on: give one (a threshold, or a split to choose it)"
            )
        if self.calibrate_on and self.calibrate_on == self.split:
            problems.append(
                f"--calibrate_on {self.calibrate_on}: the threshold is never chosen on the split it is tested on "
                "(the oracle ceiling in metrics.json is that); calibrate on another split, e.g. validation"
            )
        if self.limit is not None and self.limit < 1:
            problems.append(f"--limit {self.limit}: give a positive number of questions, or leave it out for all")
        if self.batch_size < 1:
            problems.append(f"--batch_size {self.batch_size}: give a positive number (e.g. 32)")
        return problems


ARGUMENTS = [TestArguments, ModelLoadingArguments, GenerationOptions]  # the options, in --help's order


def main(argv: list[str] | None = None) -> int:
    args, model_args, options = parse_dataclasses(ARGUMENTS, argv, description=__doc__)
    setup_logging()
    try:
        evaluate(args, model_args, options)
    except Exception as e:  # the user's input or disk: one line naming it and the fix; a bug: its traceback
        return exit_code_of(e, logger.error, where=args.output_dir)
    return 0


def evaluate(args: TestArguments, model_args: ModelLoadingArguments, options: GenerationOptions) -> None:
    from llama_squad import adapters, evaluation
    from llama_squad.files import InputError
    from llama_squad.summary import run_name

    # 1. Check the options, the questions (and those to calibrate on), the model's files before loading anything.
    problems = args.problems() + options.problems()
    if problems:
        raise InputError("invalid options:\n  - " + "\n  - ".join(problems))
    examples = evaluation.load_examples(args.dataset_path, args.split, args.limit)
    adapters.check_for_inference(model_args, args.adapter_path, allow_mismatch=args.allow_base_mismatch)
    splits = {args.split: examples}
    if args.calibrate_on:
        splits[args.calibrate_on] = evaluation.load_calibration_examples(args.dataset_path, args.calibrate_on)

    # 2. One process, or one of `accelerate launch`'s (torchrun's): each answers its share of the questions. The
    # split to calibrate on is a run of its own, in OUTPUT_DIR/calibration.
    state = evaluation.process_state()
    runs = {}
    for split, questions in splits.items():
        settings = evaluation.run_settings(
            questions[0]["task"], args.dataset_path, split, model_args, options,
            adapter_path=args.adapter_path, merge_adapter=args.merge_adapter, seed=args.seed,
        )  # fmt: skip
        folder = Path(args.output_dir) / ("" if split == args.split else evaluation.CALIBRATION_DIR)
        runs[split] = evaluation.EvaluationRun(folder, settings, questions, state)
    run = runs[args.split]
    with contextlib.ExitStack() as stack:
        # 3. One run at a time per folder; resume only results of these settings and of this run's questions.
        todo = [question for r in runs.values() for question in r.claim(stack, args.overwrite)]

        # 4. The model (base + adapter, merged, or the embedded default), if anything is left to answer.
        answerer = None
        if todo:
            answerer = evaluation.load_answerer(
                model_args, options, adapter_path=args.adapter_path, merge_adapter=args.merge_adapter,
                seed=args.seed, device_map=run.device_map,
            )  # fmt: skip

        # 5. Record the settings, then answer in batches, appending scored rows (to this process's shard).
        info = dict(
            limit=args.limit, dataset_path=args.dataset_path, model_name_or_path=model_args.model_name_or_path,
            adapter_path=args.adapter_path, batch_size=args.batch_size,
        )  # fmt: skip
        for r in runs.values():
            r.start(info, overwrite=args.overwrite)
            if answered := r.answer(answerer, args.batch_size):
                logger.info("answered %d questions in %.1f s (%.2f questions/s)", *answered, answered[0] / answered[1])
        if not run.is_main:
            return

        # 6. One results.csv, the metrics of exactly its rows; under a no-answer threshold (given, or chosen on the
        # calibration split) the calibrated scores and the oracle ceiling too.
        thresholds, source = evaluation.thresholds_for(args.no_answer_threshold, runs.get(args.calibrate_on))
        rows, metrics = run.finish(thresholds, source)
        # 7. The model card of the adapter (or merged model) train.py wrote gets these scores of its test split.
        if args.split == "test" and args.limit is None:
            evaluation.update_model_card(args.adapter_path or model_args.model_name_or_path, run.output_dir)
    logger.info("%s, %d questions: %s", run_name(run.results_csv), len(rows), evaluation.headline(run.task, metrics))
    logger.info("wrote %s and %s", run.results_csv, run.output_dir / "metrics.json")


if __name__ == "__main__":
    sys.exit(main())

"""Answer the test split of a create_dataset.py dataset in batches and score every answer: one results row per
question in OUTPUT_DIR/results.csv, the run's metrics in OUTPUT_DIR/metrics.json.

    python test.py --dataset_path data/squad_v2_dev_split --adapter_path output/smollm2 \
        --output_dir output/smollm2/eval
    python test.py --dataset_path data/squad_v2_dev_split --model_name_or_path output/smollm2/merged \
        --output_dir eval/merged
    python test.py --dataset_path data/squad_v2_dev_split --output_dir eval/zero_shot --limit 200   # the untuned model

Re-running the same command after a crash or Ctrl-C resumes where it stopped.
"""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from llama_squad.cli import parse_dataclasses, setup_logging
from llama_squad.generation import GenerationOptions

logger = logging.getLogger("test")


@dataclass
class TestArguments:
    """What to evaluate, on what, and where the results go."""

    dataset_path: str = field(metadata={"help": "A dataset folder written by create_dataset.py."})
    output_dir: str = field(metadata={"help": "results.csv and metrics.json are written here."})
    model_name_or_path: str = field(
        default="embedded",
        metadata={"help": "Base or merged model: Hub id, folder, or 'embedded' (SmolLM2-135M-Instruct)."},
    )
    adapter_path: str | None = field(
        default=None, metadata={"help": "A LoRA adapter folder (train.py's output_dir) to apply to the model."}
    )
    merge_adapter: bool = field(
        default=True,
        metadata={
            "help": "Fold the adapter into the weights before generating: faster, same answers up to rounding "
            "(never with --quantization)."
        },
    )
    split: str = field(default="test", metadata={"help": "Which split to answer."})
    limit: int | None = field(default=None, metadata={"help": "Answer only the first N questions (quick runs)."})
    batch_size: int = field(default=32, metadata={"help": "Questions generated together (sorted by prompt length)."})
    dtype: str = field(
        default="auto", metadata={"help": "auto: bfloat16 on capable GPUs, float16 on others, float32 on CPU."}
    )
    quantization: str | None = field(default=None, metadata={"help": "Load the model in 4bit or 8bit (bitsandbytes)."})
    attn_implementation: str | None = field(default=None, metadata={"help": "Attention kernel (sdpa, eager, ...)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the Hub."})
    model_cache_dir: str | None = field(default=None, metadata={"help": "Where the embedded model is cached."})
    seed: int = field(default=42, metadata={"help": "Seed for sampling."})


def main(argv: list[str] | None = None) -> int:
    args, options = parse_dataclasses([TestArguments, GenerationOptions], argv)
    setup_logging()
    from llama_squad import generation, models
    from llama_squad.io import InputError
    from llama_squad.results import read_results, summarize
    from llama_squad.summary import format_table, metrics_table, run_name

    try:
        # 1. The questions, and the model (base + adapter, merged, or the embedded default).
        examples = generation.load_examples(args.dataset_path, args.split, args.limit)
        model, tokenizer = models.load_for_inference(
            args.model_name_or_path,
            adapter_path=args.adapter_path,
            dtype=args.dtype,
            quantization=args.quantization,
            attn_implementation=args.attn_implementation,
            trust_remote_code=args.trust_remote_code,
            cache_dir=args.model_cache_dir,
            merge_adapter=args.merge_adapter,
        )
    except InputError as e:
        logger.error("%s", e)
        return 1
    import transformers

    transformers.set_seed(args.seed)

    # 2. Generate in batches, appending scored rows to results.csv (resumes a finished part).
    output_csv = Path(args.output_dir) / "results.csv"
    generator = generation.Generator(model, tokenizer, options)
    answered, seconds = generation.run_generation(generator, examples, output_csv, args.batch_size)
    if answered:
        logger.info("answered %d questions in %.1f s (%.2f questions/s)", answered, seconds, answered / seconds)

    # 3. Summarize like summarize_results.py, and save the metrics.
    results = read_results(output_csv)
    metrics = summarize(results)
    generation.save_metrics(metrics, Path(args.output_dir) / "metrics.json")
    print(format_table(metrics_table({run_name(output_csv): {"task": results["task"].iloc[0], **metrics}})))
    logger.info("wrote %s and %s", output_csv, Path(args.output_dir) / "metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

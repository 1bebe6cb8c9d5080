"""Training throughput and peak memory of our trainer against the original llama-squad recipe, in one run.

    # CPU (~5 min on 2 idle cores): a tiny random Llama with the real SmolLM2 tokenizer
    python benchmarks/bench_train.py --model tiny --examples 64 --batch_size 8 --max_length 1024

    # CPU: padded vs padding-free vs packed rows (sdpa's per-example mask) on the embedded SmolLM2-135M
    python benchmarks/bench_train.py --model embedded --examples 64 --batch_size 8 --max_length 512 \
        --variants dynamic,padding_free,packing

    # GPU: SmolLM2-135M-Instruct (bf16), then a random model shaped like Llama-3.2-1B (Llama-3 tokenizer);
    # --packing adds the padding-free and packing rows (flash_attention_2 for every row where flash-attn is installed)
    python benchmarks/bench_train.py --model embedded --examples 2048 --batch_size 16 --packing --json_out smollm2.json
    python benchmarks/bench_train.py --model llama-3.2-1b-shape --examples 1024 --batch_size 8 --packing \
        --json_out llama1b.json

    # Data parallelism: the dynamic variant in 1 process, then in N processes (accelerate launch, DDP; gloo on CPU)
    python benchmarks/bench_train.py --processes 2 --examples 64 --batch_size 4 --max_length 512

Data: SQuAD v2 training rows as create_dataset.py builds them (dev-v2.0.json, test articles 25:35 held out), the
first --examples of a seeded shuffle, tokenized with answer-only labels; rows longer than --max_length are dropped
(and counted). Every variant trains one epoch over exactly these examples, with the same model, LoRA adapter, batch
size, seed and TrainConfig, through ``llama_squad.training.build_trainer``; only what the recipes differ in changes:

    baseline  the original llama-squad recipe: every batch padded to max_length (AnswerOnlyCollator with
              pad_to_multiple_of=max_length), random order, no packing
    dynamic   our default: AnswerOnlyCollator pads each batch to its longest row, random order (the baseline's
              batches)
    grouped   dynamic + train_sampling_strategy=group_by_length (transformers' LengthGroupedSampler: batches of
              similar lengths), an option of train.py (TrainConfig is TRL's SFTConfig)
    padding_free  (--packing) dynamic's batches, each laid out as one row without padding (AnswerOnlyCollator
              padding_free=True: position_ids restart at 0 for each example)
    packing   (--packing) TRL packing (BFD) of whole examples into rows of max_length, a batch of rows laid out as
              one row; as many rows a step as hold about the padded variants' tokens (batch x mean length /
              max_length, at least 1), so that a step trains about as many examples

--variants picks some of them (the first is the baseline of the ratios). Padding-free and packed rows keep their
examples apart with sdpa and eager (transformers builds a block-causal mask from the position ids: dense, its cost
grows with the square of the whole row) and flash attention (variable-length kernel); train.py refuses the others.

--processes N compares instead 1 process with N data-parallel processes on the dynamic variant: the same examples
(a multiple of N x batch), the same per-device batch (so N processes take N x fewer steps of N x the examples), the
machine's cores split evenly between the processes on a CPU (one GPU each on GPUs). Tokens/s of N processes is all
the non-pad tokens they trained over the longest process's epoch time; peak memory is per process.

Each variant runs in a fresh subprocess, so peak memories do not mix: --warmup_steps steps first (not timed), then
the timed epoch, from on_train_begin to the last on_step_end (batch loading, forward, backward, optimizer step).
Tokens/s counts non-pad tokens only (attention-mask ones): the same numerator for every variant. Peak memory is
torch.cuda.max_memory_allocated during the timed epoch on a GPU, and the process's peak RSS (VmHWM, reset before the
timed epoch) on the CPU; "Δ" is that peak minus the memory in use just before the epoch (activations, logits,
optimizer state). MFU = 4 × N × non-pad tokens/s ÷ peak FLOP/s, N the parameters of the base model's linear layers
(lm_head included): forward 2N plus backward 2N for the activations, none for the frozen weights; attention scores
and padding are not counted. Peak FLOP/s: bf16 dense from a table of known GPUs, or --peak_tflops; n/a otherwise.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import DEV, missing_data
from common.data import TRAINED_MODELS, dev_split, dtype_name, trained_model, trained_tokenizer
from common.machine import cpu_count, peak_flops, versions_line
from common.options import add_run_options, benchmark_parser
from common.report import gib, print_table, quiet, ratio, write_json
from common.scripts import rank_file, run_processes
from common.training import timed_epoch

VARIANTS = ("baseline", "dynamic", "grouped", "padding_free", "packing")
PACKED = ("padding_free", "packing")
# The options a child process gets again (the parent runs each variant in a fresh process).
FORWARDED = ("model", "examples", "batch_size", "max_length", "lora_r", "warmup_steps", "seed", "tokenizer",
             "attn_implementation", "packed_rows")  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", choices=TRAINED_MODELS, default="tiny", help="tiny: 2 layers, hidden 128 (CPU)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder for tiny / llama-3.2-1b-shape")
    parser.add_argument("--examples", type=int, default=None, help="training examples (default: 64 CPU, 2048 GPU)")
    parser.add_argument("--batch_size", type=int, default=8, help="per-device train batch size")
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--lora_r", type=int, default=16, help="LoRA rank (alpha = 2r), on all linear layers")
    parser.add_argument(
        "--warmup_steps", type=int, default=None, help="untimed steps before the timed epoch (default: 1 CPU, 2 GPU)"
    )
    parser.add_argument("--attn_implementation", default=None, help="sdpa (default), eager, flash_attention_2")
    parser.add_argument("--packing", action="store_true", help="add the padding-free and TRL packing rows")
    parser.add_argument(
        "--variants", default=None, help=f"comma-separated, the first the baseline (default: all; of {VARIANTS})"
    )
    parser.add_argument(
        "--packed_rows", type=int, default=None, help="packing: rows a step (default: about the padded tokens)"
    )
    parser.add_argument("--peak_tflops", type=float, default=None, help="peak FLOP/s of the device, for MFU")
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="compare 1 process with N data-parallel processes (accelerate launch) instead of the variants",
    )
    add_run_options(parser, seed=0)
    # Internal: one variant in this process (the parent runs each in a fresh subprocess).
    parser.add_argument("--variant", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result_file", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.variant:  # a child process (or one of N): one variant, its figures to --result_file
        return train_variant(args)
    if missing_data(DEV):
        return 1
    start = time.perf_counter()
    quiet()

    # 1. The arms, the first one the baseline: the variants, or the dynamic variant in 1 process and in N.
    cuda = device_defaults(args)
    arms, note = process_arms(args, cuda) if args.processes else variant_arms(args, cuda)

    with tempfile.TemporaryDirectory() as tmp:
        # 2. The same tokenized examples for every arm.
        print(f"tokenizing {args.examples} SQuAD v2 training examples...", file=sys.stderr)
        data = prepare_data(args, Path(tmp) / "data")
        if args.packed_rows is None:  # packing: about the padded variants' tokens a step
            args.packed_rows = max(1, round(args.batch_size * data["length_mean"] / args.max_length))
        # 3. Each arm trains one timed epoch in fresh processes, one arm after the other.
        results = [train_arm(args, arm, Path(tmp)) for arm in arms]

    # 4. The figures, each arm against the baseline; the JSON.
    if args.processes:
        print_processes(args, data, results, cuda)
    else:
        print_variants(args, data, results, note)
    print(f"wall time     {time.perf_counter() - start:.0f} s for the whole benchmark")
    if args.json_out:
        given = {k: v for k, v in vars(args).items() if v is not None}
        write_json(args.json_out, {"args": given, "data": data, "results": results})
    return 0


# ------------------------------------------------------------------------------------------------------- arms


def device_defaults(args) -> bool:
    """Fill in --examples and --warmup_steps by device; whether there is a GPU."""
    import torch

    cuda = torch.cuda.is_available()
    if args.examples is None:
        args.examples = 2048 if cuda else 64
    if args.warmup_steps is None:
        args.warmup_steps = 2 if cuda else 1
    return cuda


def variant_arms(args, cuda: bool) -> tuple[list[dict], str | None]:
    """(the variants, each in one process, the first the baseline; a note on the packed rows' attention)."""
    import importlib.util

    if args.variants:
        variants = [v.strip() for v in args.variants.split(",")]
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown or len(set(variants)) != len(variants) or len(variants) < 2:
            raise SystemExit(f"--variants {args.variants}: give 2 or more of {', '.join(VARIANTS)}, each once")
    else:
        variants = [v for v in VARIANTS if v not in PACKED or args.packing]
    note = None
    if any(v in PACKED for v in variants):
        if cuda and args.attn_implementation is None and importlib.util.find_spec("flash_attn") is not None:
            args.attn_implementation = "flash_attention_2"  # for every row: the same kernel in each comparison
        attention = args.attn_implementation or "the model's default (sdpa)"
        note = f"padding-free and packed rows: {attention} attention keeps the examples of a row apart"
        if attention != "flash_attention_2":
            note += " with a dense block-causal mask over the whole row (no variable-length kernel)"
    arms = [{"variant": v, "processes": 1, "threads": None, "doing": f"training {v}", "name": v} for v in variants]
    return arms, note


def process_arms(args, cuda: bool) -> tuple[list[dict], None]:
    """The dynamic variant in 1 process, then in --processes N (accelerate launch): the machine's cores split evenly
    between the processes on a CPU, one GPU each on GPUs."""
    import torch

    n = args.processes
    if n < 2:
        raise SystemExit(f"--processes {n}: give 2 or more (the baseline is 1 process)")
    if cuda and torch.cuda.device_count() < n:
        raise SystemExit(f"--processes {n}: this machine has {torch.cuda.device_count()} GPUs; one process per GPU")
    cores = cpu_count()
    arms = [
        {"variant": "dynamic", "processes": p, "threads": t, "name": f"processes-{p}",
         "doing": f"training in {p} process(es), {t} thread(s) each"}
        for p, t in ((1, 1 if cuda else cores), (n, 1 if cuda else max(1, cores // n)))
    ]  # fmt: skip
    return arms, None


def train_arm(args, arm: dict, tmp: Path) -> dict:
    """Train ``arm`` in fresh processes (N of them: accelerate launch); its figures, one row for N processes."""
    print(f"{arm['doing']}...", file=sys.stderr, flush=True)
    given = {name: getattr(args, name) for name in FORWARDED if getattr(args, name) is not None}
    argv = [str(Path(__file__).resolve()), *(x for name, value in given.items() for x in (f"--{name}", str(value)))]
    result_file = tmp / f"{arm['name']}.json"
    argv += ["--variant", arm["variant"], "--data_dir", str(tmp / "data"), "--result_file", str(result_file)]
    ranks = run_processes(argv, result_file, arm["processes"], arm["threads"])
    return merge_ranks(ranks) if args.processes else ranks[0]


def merge_ranks(results: list[dict]) -> dict:
    """One row for the processes of a data-parallel run: tokens of all of them over the slowest one's time."""
    seconds = max(r["seconds"] for r in results)
    tokens = sum(r["non_pad_tokens"] for r in results)
    return results[0] | {
        "examples": sum(r["steps"] * r["batch_size"] for r in results),
        "non_pad_tokens": tokens,
        "padded_positions": sum(r["padded_positions"] for r in results),
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "cpu_seconds": sum(r["cpu_seconds"] for r in results),
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in results),
    }


# ----------------------------------------------------------------------------------------------- data and model


def prepare_data(args, folder: Path) -> dict:
    """Tokenize the first --examples rows of a seeded shuffle of the SQuAD v2 training split into ``folder``."""
    import statistics

    from llama_squad.models import load_tokenizer
    from llama_squad.tokenization import tokenize_dataset

    train = dev_split()["train"].shuffle(seed=args.seed)
    train = train.select(range(min(args.examples, len(train))))
    tokenized, dropped = tokenize_dataset(
        train, load_tokenizer(trained_tokenizer(args.model, args.tokenizer)), args.max_length
    )
    per_step = args.batch_size * (args.processes or 1)  # whole batches on every process: one epoch = the same examples
    usable = len(tokenized) // per_step * per_step
    if usable == 0:
        raise SystemExit(
            f"--examples {args.examples}: fewer than {per_step} examples (one batch each) fit --max_length"
        )
    tokenized = tokenized.select(range(usable))
    tokenized.save_to_disk(str(folder))
    lengths = [len(ids) for ids in tokenized["input_ids"]]
    return {
        "examples": usable,
        "dropped_too_long": dropped,
        "tokenizer": trained_tokenizer(args.model, args.tokenizer),
        "length_mean": statistics.fmean(lengths),
        "length_median": statistics.median(lengths),
        "length_max": max(lengths),
    }


# ------------------------------------------------------------------------------------------- one variant (child)


def train_config(args, output_dir: str):
    """The TrainConfig of every variant (one epoch after --warmup_steps steps), with what the variant changes."""
    from llama_squad.config import TrainConfig

    variant = args.variant
    return TrainConfig(
        output_dir=output_dir,
        max_length=args.max_length,
        per_device_train_batch_size=args.packed_rows if variant == "packing" else args.batch_size,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        max_steps=args.warmup_steps,
        warmup_steps=0,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10**6,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
        data_seed=args.seed,
        pad_to_multiple_of=args.max_length if variant == "baseline" else None,
        train_sampling_strategy="group_by_length" if variant == "grouped" else "random",
        packing=variant == "packing",
        padding_free=variant == "padding_free",
    )


def train_variant(args) -> int:
    """Train one epoch with --variant and write its figures to --result_file (one file per process)."""
    quiet()
    import torch
    from datasets import load_from_disk
    from transformers import set_seed

    from llama_squad.config import ModelArguments
    from llama_squad.models import load_tokenizer
    from llama_squad.training import build_trainer, lora_config

    set_seed(args.seed)
    tokenizer = load_tokenizer(trained_tokenizer(args.model, args.tokenizer))
    model = trained_model(args.model, tokenizer, args.seed, args.attn_implementation, args.max_length)
    flop_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))  # before LoRA
    train = load_from_disk(args.data_dir)
    peft = lora_config(ModelArguments(lora_r=args.lora_r, lora_alpha=2 * args.lora_r))
    with tempfile.TemporaryDirectory() as out:
        config = train_config(args, out)
        epoch = timed_epoch(build_trainer(model, tokenizer, config, train, None, peft), args.warmup_steps)
    result = {
        "variant": args.variant,
        "examples": len(train),
        "batch_size": config.per_device_train_batch_size,  # packing: packed rows
        "max_length": args.max_length,
        "sampler": config.train_sampling_strategy,
        "gradient_checkpointing": bool(config.gradient_checkpointing),
        **epoch,
        "flop_params": flop_params,  # linear layers' weights, lm_head included: 2 FLOP per token each, forward
        "dtype": dtype_name(model),
        "attn_implementation": model.config._attn_implementation,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "process_index": config.process_index,
        "processes": config.world_size,
        "threads": torch.get_num_threads(),
    }
    rank_file(args.result_file, result["process_index"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


# ------------------------------------------------------------------------------------------------------- report


def print_variants(args, data: dict, results: list[dict], note: str | None) -> None:
    """What was measured (device, versions, model, data, timing), the table of the variants, then each against the
    baseline; sets each result's ``mfu``."""
    first = results[0]
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(first["device"], first["dtype"])
    threads = f" ({first['threads']} threads)" if first["device"] == "cpu" else ""
    print(f"device        {first['device']}{threads}")
    print(f"versions      {versions_line('torch', 'transformers', 'trl')}")
    print(
        f"model         {args.model}, {first['dtype']}, {first['flop_params'] / 1e6:.1f}M linear parameters, "
        f"{first['attn_implementation']} attention, LoRA r={args.lora_r} on all linear layers, "
        f"gradient checkpointing {first['gradient_checkpointing']}"
    )
    print(
        f"data          SQuAD v2 train rows (dev-v2.0.json, articles 25:35 held out), {data['examples']} examples "
        f"(seed {args.seed}), {data['dropped_too_long']} dropped > max_length; tokens/example mean "
        f"{data['length_mean']:.0f}, median {data['length_median']:.0f}, max {data['length_max']}"
    )
    print(f"timing        one epoch after {args.warmup_steps} untimed warm-up steps, each variant in a fresh process")
    print(f"peak FLOP/s   {peak / 1e12:.0f} TFLOP/s" if peak else "peak FLOP/s   n/a (give --peak_tflops for an MFU)")
    print()
    for r in results:
        r["mfu"] = 4 * r["flop_params"] * r["tokens_per_s"] / peak if peak else None
    columns = [("variant", "<9"), ("examples", ">8"), ("steps", ">5"), ("batch", ">5"), ("max_len", ">7"),
               ("mean padded len", ">15.1f"), ("non-pad tok/s", ">13,.0f"), ("padding", ">7.1%"),
               ("peak mem", ">10"), ("Δ mem", ">10"), ("MFU", ">6.1%")]  # fmt: skip
    print_table(columns, [
        [r["variant"], r["examples"], r["steps"], r["batch_size"], r["max_length"], r["mean_padded_length"],
         r["tokens_per_s"], r["padding_fraction"], gib(r["peak_memory_bytes"]), gib(r["memory_delta_bytes"]), r["mfu"]]
        for r in results
    ])  # fmt: skip
    print()
    base = results[0]
    goal = "   (goal: tokens/s >= 2x)" if base["variant"] == "baseline" else ""
    for r in results[1:]:
        # On the CPU, also tokens per CPU-second: other processes on the machine inflate wall time, not CPU time.
        cpu = f" (per CPU-second {1 / ratio(r, base, 'cpu_seconds'):.2f}x)" if base["device"] == "cpu" else ""
        print(
            f"{r['variant']:<12} / {base['variant']}: tokens/s {ratio(r, base, 'tokens_per_s'):.2f}x{cpu}, "
            f"peak memory {ratio(r, base, 'peak_memory_bytes'):.2f}x, "
            f"Δ memory {ratio(r, base, 'memory_delta_bytes'):.2f}x, "
            f"padded positions {1 / ratio(r, base, 'padded_positions'):.2f}x fewer{goal}"
        )
    dynamic = next((r for r in results[1:] if r["variant"] == "dynamic"), None)
    for r in results:
        if dynamic and r["variant"] in PACKED:  # the packed rows against the same batches padded to their longest
            cpu = f" (per CPU-second {1 / ratio(r, dynamic, 'cpu_seconds'):.2f}x)" if r["device"] == "cpu" else ""
            print(f"{r['variant']:<12} / dynamic: tokens/s {ratio(r, dynamic, 'tokens_per_s'):.2f}x{cpu}")
    if any(r["variant"] == "grouped" for r in results):
        # transformers' get_length_grouped_indices: sorted mega-batches of min(50, N // (4 * batch)) batches
        group = max(1, min(data["examples"] // (4 * args.batch_size), 50)) * args.batch_size
        print(
            f"grouped sorts by length within random mega-batches of {group} examples (transformers' default: "
            f"min(50, examples // (4 × batch)) batches; 400 examples at batch 8 from 1,600 examples up)"
        )
    if note:
        print(note)


def print_processes(args, data: dict, rows: list[dict], cuda: bool) -> None:
    """What was measured, the table of 1 and N processes, and N against 1."""
    n, first = args.processes, rows[0]
    print(f"device        {first['device']}" + ("" if cuda else f" ({cpu_count()} cores)"))
    print(f"versions      {versions_line('torch', 'transformers')}")
    print(f"model         {args.model}, {first['dtype']}, LoRA r={args.lora_r} on all linear layers, dynamic padding")
    print(
        f"data          {data['examples']} SQuAD v2 training examples, tokens/example mean {data['length_mean']:.0f}, "
        f"max {data['length_max']}; per-device batch {args.batch_size}"
    )
    print(f"timing        one epoch after {args.warmup_steps} untimed warm-up steps, in fresh processes")
    print()
    per_cpu_s = [r["non_pad_tokens"] / r["cpu_seconds"] for r in rows]  # tokens per CPU-second
    columns = [("processes", ">9"), ("threads/proc", ">12"), ("steps", ">5"), ("eff. batch", ">10"),
               ("non-pad tok/s", ">13,.0f"), ("tok/CPU-s", ">9,.0f"), ("peak mem/proc", ">13")]  # fmt: skip
    print_table(columns, [
        [r["processes"], r["threads"], r["steps"], r["batch_size"] * r["processes"], r["tokens_per_s"], cpu,
         gib(r["peak_memory_bytes"])]
        for r, cpu in zip(rows, per_cpu_s, strict=True)
    ])  # fmt: skip
    base, many = rows
    print()
    print(
        f"{n} processes / 1 process: tokens/s {ratio(many, base, 'tokens_per_s'):.2f}x "
        f"(per CPU-second {per_cpu_s[1] / per_cpu_s[0]:.2f}x; ideal {n}x with {n} devices)"
    )
    if not cuda:
        print(
            f"on {cpu_count()} CPU cores the processes share the cores one process already used: expect about 1x "
            "(gloo all-reduces the LoRA gradients each step); the run checks correctness, GPUs give the speed-up"
        )


if __name__ == "__main__":
    sys.exit(main())

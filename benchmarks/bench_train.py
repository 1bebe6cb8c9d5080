"""Training throughput and peak memory of our trainer against the original llama-squad recipe, in one run.

    # CPU (~5 min on 2 idle cores): a tiny random Llama with the real SmolLM2 tokenizer
    python benchmarks/bench_train.py --model tiny --examples 64 --batch_size 8 --max_length 1024

    # GPU: SmolLM2-135M-Instruct (bf16), then a random model shaped like Llama-3.2-1B (Llama-3 tokenizer);
    # --packing adds a TRL packing row where flash-attn is installed
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
    packing   (--packing, CUDA + flash-attn only) TRL packing (BFD) into rows of max_length

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
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    DEV,
    REPO,
    SMOLLM2,
    TOKENIZERS,
    dev_split,
    missing_data,
    print_header,
    proc_status_kib,
    quiet,
    reset_peak_rss,
    write_json,
)

MODELS = ("tiny", "embedded", "llama-3.2-1b-shape")
VARIANTS = ("baseline", "dynamic", "grouped", "packing")
DEFAULT_TOKENIZER = {
    "tiny": SMOLLM2,
    "llama-3.2-1b-shape": TOKENIZERS / "meta-llama-3-8b-instruct",
}
# LlamaConfig fields of the random models.
SHAPES = {
    "tiny": dict(
        hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    "llama-3.2-1b-shape": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    ),
}
# Dense bf16 tensor-core peaks (TFLOP/s) by device name, most specific first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("H800", 989.4),
    ("A100", 312.0),
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="tiny", help="tiny: 2 layers, hidden 128 (CPU)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder for tiny / llama-3.2-1b-shape")
    parser.add_argument("--examples", type=int, default=None, help="training examples (default: 64 CPU, 2048 GPU)")
    parser.add_argument("--batch_size", type=int, default=8, help="per-device train batch size")
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--lora_r", type=int, default=16, help="LoRA rank (alpha = 2r), on all linear layers")
    parser.add_argument(
        "--warmup_steps", type=int, default=None, help="untimed steps before the timed epoch (default: 1 CPU, 2 GPU)"
    )
    parser.add_argument("--attn_implementation", default=None, help="sdpa (default), eager, flash_attention_2")
    parser.add_argument("--packing", action="store_true", help="add a TRL packing row (needs CUDA and flash-attn)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="peak FLOP/s of the device, for MFU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json_out", default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="compare 1 process with N data-parallel processes (accelerate launch) instead of the variants",
    )
    # Internal: one variant in this process (the parent runs each in a fresh subprocess).
    parser.add_argument("--variant", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result_file", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------- model


def tokenizer_path(args) -> str:
    if args.model == "embedded":
        from llama_squad.models import resolve_model_path

        return resolve_model_path("embedded")
    return str(args.tokenizer or DEFAULT_TOKENIZER[args.model])


def build_model(args, tokenizer):
    """The model to train, in bf16 on a GPU that supports it, float32 on the CPU; random ones seeded."""
    import torch

    from llama_squad.config import ModelLoadingArguments
    from llama_squad.models import load_model, resolve_dtype, resolve_model_path
    from llama_squad.testing import random_llama

    if args.model == "embedded":
        loading = ModelLoadingArguments(attn_implementation=args.attn_implementation)
        return load_model(resolve_model_path("embedded"), loading)
    return random_llama(
        tokenizer,
        seed=args.seed,
        dtype=resolve_dtype("auto"),
        device="cuda" if torch.cuda.is_available() else "cpu",
        attn_implementation=args.attn_implementation,
        max_position_embeddings=max(2048, args.max_length),
        **SHAPES[args.model],
    )


def linear_params(model) -> int:
    """Parameters costing 2 FLOP per token in the forward pass: every linear layer's weight, lm_head included."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


# ----------------------------------------------------------------------------------------------------------- data


def prepare_data(args, folder: Path) -> dict:
    """Tokenize the first --examples rows of a seeded shuffle of the SQuAD v2 training split into ``folder``."""
    import statistics

    from llama_squad.models import load_tokenizer
    from llama_squad.tokenization import tokenize_dataset

    train = dev_split()["train"].shuffle(seed=args.seed)
    train = train.select(range(min(args.examples, len(train))))
    tokenizer = load_tokenizer(tokenizer_path(args))
    tokenized, dropped = tokenize_dataset(train, tokenizer, args.max_length)
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
        "tokenizer": tokenizer_path(args),
        "length_mean": statistics.fmean(lengths),
        "length_median": statistics.median(lengths),
        "length_max": max(lengths),
    }


# ------------------------------------------------------------------------------------------------- one variant


class RecordingCollator:
    """Wraps the trainer's collator and records, per batch, the non-pad tokens and the padded positions."""

    def __init__(self, collator):
        self.collator = collator
        self.batches = []

    def __call__(self, examples):
        batch = self.collator(examples)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        # Padding-free / packed batches have no attention mask: one row, no padding (no pad_to_multiple_of here).
        tokens = int(mask.sum()) if mask is not None else ids.numel()
        self.batches.append((tokens, ids.numel(), len(examples)))
        return batch


def step_timer():
    import torch
    from transformers import TrainerCallback

    def now():
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    class StepTimer(TrainerCallback):
        """Timestamps the start of training and the end of every optimizer step."""

        def __init__(self):
            self.start, self.steps, self.cpu_start, self.cpu_end = None, [], None, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.steps, self.cpu_start = now(), [], time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(now())
            self.cpu_end = time.process_time()

    return StepTimer()


class Memory:
    """Peak memory of the timed epoch: CUDA allocator peak, or the process's peak RSS (VmHWM) on the CPU."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()

    def reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            return
        reset_peak_rss()
        self.before = self._status("VmRSS")

    def peak(self) -> int:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._status("VmHWM")

    @staticmethod
    def _status(key: str) -> int:
        kib = proc_status_kib(key)
        if kib is None:
            import resource

            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kib * 1024


def train_config(args, output_dir: str):
    """The TrainConfig of every variant (one epoch after --warmup_steps steps), with what the variant changes."""
    from llama_squad.config import TrainConfig

    variant = args.variant
    return TrainConfig(
        output_dir=output_dir,
        max_length=args.max_length,
        per_device_train_batch_size=args.batch_size,
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
    )


def timed_epoch(args, model, tokenizer, config, train) -> tuple[RecordingCollator, object, Memory, int]:
    """Train --warmup_steps steps untimed, then one timed epoch over the same examples; (the batches recorded, the
    step timer, the memory before the epoch, its peak)."""
    from transformers import PrinterCallback

    from llama_squad.config import ModelArguments
    from llama_squad.training import build_trainer, lora_config

    peft = lora_config(ModelArguments(lora_r=args.lora_r, lora_alpha=2 * args.lora_r))
    trainer = build_trainer(model, tokenizer, config, train, None, peft)
    trainer.remove_callback(PrinterCallback)  # disable_tqdm prints every log dict instead
    recorder = RecordingCollator(trainer.data_collator)
    trainer.data_collator = recorder
    timer = step_timer()
    trainer.add_callback(timer)
    memory = Memory()

    if args.warmup_steps:
        trainer.train()  # untimed: allocator, kernels, lazy initialisation
    trainer.args.max_steps = -1  # then one whole epoch over the same examples
    recorder.batches = []
    memory.reset()
    trainer.train()
    return recorder, timer, memory, memory.peak()


def run_variant(args) -> dict:
    """Train one epoch with one variant and return its figures."""
    quiet()
    import torch
    from datasets import load_from_disk
    from transformers import set_seed

    from llama_squad.models import load_tokenizer

    set_seed(args.seed)
    tokenizer = load_tokenizer(tokenizer_path(args))
    model = build_model(args, tokenizer)
    flop_params = linear_params(model)  # before LoRA adds its own linear layers
    train = load_from_disk(args.data_dir)
    with tempfile.TemporaryDirectory() as out:
        config = train_config(args, out)
        recorder, timer, memory, peak = timed_epoch(args, model, tokenizer, config, train)

    steps = len(timer.steps)
    seconds = timer.steps[-1] - timer.start
    batches = recorder.batches[:steps]
    tokens = sum(b[0] for b in batches)
    positions = sum(b[1] for b in batches)
    rows = sum(b[2] for b in batches)  # packing: packed rows
    return {
        "variant": args.variant,
        "examples": len(train),
        "steps": steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "sampler": config.train_sampling_strategy,
        "gradient_checkpointing": bool(config.gradient_checkpointing),
        "mean_padded_length": positions / rows,
        "non_pad_tokens": tokens,
        "padded_positions": positions,
        "padding_fraction": 1 - tokens / positions,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "cpu_seconds": timer.cpu_end - timer.cpu_start,  # all threads of this process: robust to a shared CPU
        "step_seconds": [b - a for a, b in zip([timer.start, *timer.steps[:-1]], timer.steps, strict=True)],
        "peak_memory_bytes": peak,
        "memory_delta_bytes": peak - memory.before,
        "flop_params": flop_params,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "attn_implementation": model.config._attn_implementation,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "process_index": config.process_index,
        "processes": config.world_size,
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------------------------- parent


def peak_flops(args, device: str, dtype: str) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if dtype not in ("bfloat16", "float16"):
        return None
    for name, tflops in PEAK_BF16_TFLOPS:
        if name in device:
            return tflops * 1e12
    return None


def chosen_variants(args, cuda: bool) -> tuple[list[str], str | None]:
    variants = ["baseline", "dynamic", "grouped"]
    if not args.packing:
        return variants, None
    import importlib.util

    if not cuda:
        return variants, "packing skipped: it needs a CUDA GPU and flash-attn"
    if importlib.util.find_spec("flash_attn") is None:
        return variants, "packing skipped: flash-attn is not installed (pip install flash-attn)"
    if args.attn_implementation is None:
        args.attn_implementation = "flash_attention_2"  # for every row: the same kernel in each comparison
    return [*variants, "packing"], None


def child_argv(args, variant: str, data_dir: Path, result_file: Path) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--examples", str(args.examples)]
    argv += ["--batch_size", str(args.batch_size), "--max_length", str(args.max_length), "--lora_r", str(args.lora_r)]
    argv += ["--warmup_steps", str(args.warmup_steps), "--seed", str(args.seed)]
    if args.tokenizer:
        argv += ["--tokenizer", args.tokenizer]
    if args.attn_implementation:
        argv += ["--attn_implementation", args.attn_implementation]
    return argv + ["--variant", variant, "--data_dir", str(data_dir), "--result_file", str(result_file)]


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def print_setup(args, data: dict, first: dict, peak: float | None) -> None:
    """What was measured: device, versions, model, data and timing."""
    import torch
    import transformers
    import trl

    threads = f" ({torch.get_num_threads()} threads)" if first["device"] == "cpu" else ""
    print(f"device        {first['device']}{threads}")
    print(f"versions      torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
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


def print_variants(args, data: dict, results: list[dict], peak: float | None) -> None:
    """The table of the variants, then each against the baseline; sets each result's ``mfu``."""
    header = (
        f"{'variant':<9} {'examples':>8} {'steps':>5} {'batch':>5} {'max_len':>7} {'mean padded len':>15} "
        f"{'non-pad tok/s':>13} {'padding':>7} {'peak mem':>10} {'Δ mem':>10} {'MFU':>6}"
    )
    print_header(header)
    for r in results:
        mfu = f"{4 * r['flop_params'] * r['tokens_per_s'] / peak:.1%}" if peak else "n/a"
        print(
            f"{r['variant']:<9} {r['examples']:>8} {r['steps']:>5} {r['batch_size']:>5} {r['max_length']:>7} "
            f"{r['mean_padded_length']:>15.1f} {r['tokens_per_s']:>13,.0f} {r['padding_fraction']:>7.1%} "
            f"{gib(r['peak_memory_bytes']):>10} {gib(r['memory_delta_bytes']):>10} {mfu:>6}"
        )
        r["mfu"] = 4 * r["flop_params"] * r["tokens_per_s"] / peak if peak else None
    print()
    base = results[0]
    for r in results[1:]:
        # On the CPU, also tokens per CPU-second: other processes on the machine inflate wall time, not CPU time.
        cpu = base["cpu_seconds"] / r["cpu_seconds"] if base["device"] == "cpu" else None
        print(
            f"{r['variant']:<9} / baseline: tokens/s {r['tokens_per_s'] / base['tokens_per_s']:.2f}x"
            + (f" (per CPU-second {cpu:.2f}x)" if cpu else "")
            + f", peak memory {r['peak_memory_bytes'] / base['peak_memory_bytes']:.2f}x, "
            f"Δ memory {r['memory_delta_bytes'] / base['memory_delta_bytes']:.2f}x, "
            f"padded positions {base['padded_positions'] / r['padded_positions']:.2f}x fewer   (goal: tokens/s >= 2x)"
        )
    if any(r["variant"] == "grouped" for r in results):
        # transformers' get_length_grouped_indices: sorted mega-batches of min(50, N // (4 * batch)) batches
        group = max(1, min(data["examples"] // (4 * args.batch_size), 50)) * args.batch_size
        print(
            f"grouped sorts by length within random mega-batches of {group} examples (transformers' default: "
            f"min(50, examples // (4 × batch)) batches; 400 examples at batch 8 from 1,600 examples up)"
        )


def print_report(args, data: dict, results: list[dict], note: str | None, wall_s: float) -> None:
    peak = peak_flops(args, results[0]["device"], results[0]["dtype"])
    print_setup(args, data, results[0], peak)
    print_variants(args, data, results, peak)
    if note:
        print(note)
    print(f"wall time     {wall_s:.0f} s for the whole benchmark")


def rank_file(result_file: str | Path, rank: int) -> Path:
    """Where process ``rank`` of a child run writes its figures."""
    return Path(f"{result_file}.{rank}")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_argv(args, processes: int, threads: int) -> list[str]:
    """``accelerate launch`` of ``processes`` local processes: torchrun underneath; DDP over gloo without a GPU (the
    Trainer trains on the CPU there), over NCCL with one GPU each."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, "--num_cpu_threads_per_process", str(threads), "--main_process_port", str(free_port())]


def merge_ranks(results: list[dict]) -> dict:
    """One row for the processes of a data-parallel run: tokens of all of them over the slowest one's time."""
    first = results[0]
    seconds = max(r["seconds"] for r in results)
    tokens = sum(r["non_pad_tokens"] for r in results)
    return first | {
        "examples": sum(r["steps"] * r["batch_size"] for r in results),
        "non_pad_tokens": tokens,
        "padded_positions": sum(r["padded_positions"] for r in results),
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "cpu_seconds": sum(r["cpu_seconds"] for r in results),
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in results),
    }


def run_child(args, variant: str, data_dir: Path, result_file: Path, processes: int = 1, threads: int | None = None):
    """Train ``variant`` in a fresh process (in ``processes`` processes of ``threads`` threads each: accelerate
    launch); the figures of each process."""
    argv = child_argv(args, variant, data_dir, result_file)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if processes > 1:
        argv = [*launch_argv(args, processes, threads), *argv[1:]]  # argv[0] is the python interpreter
    subprocess.run(argv, check=True, env=env)
    return [json.loads(rank_file(result_file, k).read_text(encoding="utf-8")) for k in range(processes)]


def write_figures(args, data: dict, results: list[dict]) -> None:
    given = {k: v for k, v in vars(args).items() if v is not None}
    write_json(args.json_out, {"args": given, "data": data, "results": results})


def print_processes_report(args, data: dict, rows: list[dict], cuda: bool, cores: int) -> None:
    import torch
    import transformers

    n = args.processes
    first = rows[0]
    print(f"device        {first['device']}" + ("" if cuda else f" ({cores} cores)"))
    print(f"versions      torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model         {args.model}, {first['dtype']}, LoRA r={args.lora_r} on all linear layers, dynamic padding")
    print(
        f"data          {data['examples']} SQuAD v2 training examples, tokens/example mean {data['length_mean']:.0f}, "
        f"max {data['length_max']}; per-device batch {args.batch_size}"
    )
    print(f"timing        one epoch after {args.warmup_steps} untimed warm-up steps, in fresh processes")
    print()
    header = (
        f"{'processes':>9} {'threads/proc':>12} {'steps':>5} {'eff. batch':>10} {'non-pad tok/s':>13} "
        f"{'tok/CPU-s':>9} {'peak mem/proc':>13}"
    )
    print_header(header)
    for r in rows:
        print(
            f"{r['processes']:>9} {r['threads']:>12} {r['steps']:>5} {r['batch_size'] * r['processes']:>10} "
            f"{r['tokens_per_s']:>13,.0f} {r['non_pad_tokens'] / r['cpu_seconds']:>9,.0f} "
            f"{gib(r['peak_memory_bytes']):>13}"
        )
    base, many = rows
    cpu = (many["non_pad_tokens"] / many["cpu_seconds"]) / (base["non_pad_tokens"] / base["cpu_seconds"])
    print()
    print(
        f"{n} processes / 1 process: tokens/s {many['tokens_per_s'] / base['tokens_per_s']:.2f}x "
        f"(per CPU-second {cpu:.2f}x; ideal {n}x with {n} devices)"
    )
    if not cuda:
        print(
            f"on {cores} CPU cores the processes share the cores one process already used: expect about 1x "
            "(gloo all-reduces the LoRA gradients each step); the run checks correctness, GPUs give the speed-up"
        )


def compare_processes(args, cuda: bool, start: float) -> int:
    """The dynamic variant in 1 process, then in --processes N (accelerate launch), on the same examples."""
    import torch

    n = args.processes
    if n < 2:
        raise SystemExit(f"--processes {n}: give 2 or more (the baseline is 1 process)")
    if cuda and torch.cuda.device_count() < n:
        raise SystemExit(f"--processes {n}: this machine has {torch.cuda.device_count()} GPUs; one process per GPU")
    cores = cpu_count()
    runs = [(1, 1 if cuda else cores), (n, 1 if cuda else max(1, cores // n))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        print(f"tokenizing {args.examples} SQuAD v2 training examples...", file=sys.stderr)
        data = prepare_data(args, data_dir)
        for processes, threads in runs:
            print(f"training in {processes} process(es), {threads} thread(s) each...", file=sys.stderr, flush=True)
            result_file = Path(tmp) / f"processes-{processes}.json"
            rows.append(merge_ranks(run_child(args, "dynamic", data_dir, result_file, processes, threads)))
    print_processes_report(args, data, rows, cuda, cores)
    print(f"wall time     {time.perf_counter() - start:.0f} s for the whole benchmark")
    if args.json_out:
        write_figures(args, data, rows)
    return 0


def compare_variants(args, cuda: bool, start: float) -> int:
    """Each variant in a fresh process on the same examples, against the baseline."""
    variants, note = chosen_variants(args, cuda)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        print(f"tokenizing {args.examples} SQuAD v2 training examples...", file=sys.stderr)
        data = prepare_data(args, data_dir)
        for variant in variants:
            print(f"training {variant}...", file=sys.stderr, flush=True)
            results += run_child(args, variant, data_dir, Path(tmp) / f"{variant}.json")
    print_report(args, data, results, note, time.perf_counter() - start)
    if args.json_out:
        write_figures(args, data, results)
    return 0


def main() -> int:
    args = parse_args()
    if args.variant:  # a child (or one of N): one variant, figures to --result_file (one per process)
        result = run_variant(args)
        rank_file(args.result_file, result["process_index"]).write_text(json.dumps(result), encoding="utf-8")
        return 0
    if missing_data(DEV):
        return 1
    import torch

    start = time.perf_counter()
    quiet()
    cuda = torch.cuda.is_available()
    if args.examples is None:
        args.examples = 2048 if cuda else 64
    if args.warmup_steps is None:
        args.warmup_steps = 2 if cuda else 1
    if args.processes:
        return compare_processes(args, cuda, start)
    return compare_variants(args, cuda, start)


if __name__ == "__main__":
    sys.exit(main())

"""The GPU checks of issue 26 in one command and one JSON file: our training recipe against the original llama-squad
recipe, QLoRA on a Llama-3.2-1B shape, LoRA MFU on a Llama-3.1-8B shape, FSDP2 and DeepSpeed ZeRO-3 smoke runs of
train.py, and test.py's questions per second.

    # one H100 (at most 9 minutes: each step has a budget, 540 s in all)
    python benchmarks/gpu_check.py --json_out gpu_check.json
    # every step at tiny sizes on a CPU (tiny random Llamas, a handful of examples; 4 min on 2 busy cores): the test
    python benchmarks/gpu_check.py --dry_run --json_out gpu_check_dry.json
    # some steps only
    python benchmarks/gpu_check.py --steps train_recipes,generation --json_out gpu_check.json

On the lent GPU machine (../shared/gpu/README.md): run ``bash ../shared/gpu/pack.sh --bnb`` here (--bnb: QLoRA needs
bitsandbytes), then make the calls it prints back to back: each ``bash .gpu/call1/setup.sh 2>/dev/null || bash
/root/gpu/setup.sh`` carrying its part (``.gpu/call1``, ``.gpu/call2``, ..., then ``.gpu/bnb``), the last one going
on with the check, its JSON written under $OUT so that it comes back:

    bash /root/gpu/setup.sh && source /root/gpu/env.sh && \\
        python benchmarks/gpu_check.py --json_out $OUT/gpu_check.json

That machine has no DeepSpeed (zero3_smoke then records why it skipped) and no ../shared/tokenizers (the 1B and 8B
shapes then take the embedded SmolLM2 tokenizer, their vocabulary still Llama-3's 128,256 rows).

Steps (--steps picks some; each runs in a fresh process, killed past its budget, and is written to the JSON as soon
as it ends, with its status: ok, skipped with the reason, or failed with the error's line):

    train_recipes  non-pad training tokens/s of our recipe (configs/smollm2_dev_split.yaml: LoRA r64 alpha 128 dropout
                   0.05, bf16 where the GPU has it, each batch padded to its longest row, no gradient checkpointing, no
                   packing and no padding-free: those need flash-attn, off by default) against the original's settings
                   (configs/llama2_7b_chat_original.yaml: LoRA r64 alpha 16 dropout 0.1, lr 2e-4 constant, gradient
                   checkpointing, every batch padded to max_length as benchmarks/bench_train.py's baseline; not 4-bit,
                   in the same dtype as ours, AdamW in torch), both at batch 16 x 1 on the same SmolLM2-135M-Instruct
                   (the embedded model) examples, one timed epoch each; ratio ours / original (goal >= 2x; the original
                   measured 15.7-21.6k tokens/s on an H100)
    qlora_1b       QLoRA (train.py's --load_in_4bit: NF4, double quantization) on a random Llama-3.2-1B-shaped model
                   saved to disk and loaded 4-bit through llama_squad.models.load_model: tokens/s, peak GPU memory
    lora_mfu_8b    LoRA r16 on a random Llama-3.1-8B-shaped model built on the GPU in bf16, gradient checkpointing on:
                   tokens/s and MFU (original: 11.4%), see below
    fsdp2_smoke    train.py under accelerate launch --config_file configs/accelerate/fsdp.yaml --fsdp_version 2, one
                   process, a few steps; the checkpoint must be the engine's (sharded state), the saved adapter whole
    zero3_smoke    the same with configs/accelerate/deepspeed_zero3.yaml (skipped where deepspeed does not import)
    generation     test.py's answering (llama_squad.evaluation.answer_examples) of the 3,856 dev-split test questions
                   (dev-v2.0.json articles 25-34) at batch 64 with the embedded model, zero-shot: questions/s
                   (original: 55)

Timing: benchmarks/common/training.timed_epoch (untimed warm-up steps, then one epoch; tokens are non-pad tokens,
peak memory CUDA's allocator peak during the epoch) and benchmarks/common/timing.timed_run (test.py's answering,
end to end after a warm-up generate). MFU = 6 x N x tokens/s / peak, N all the model's parameters (the common 6N
convention of the original's 11.4%: forward 2N, backward 4N; LoRA skips the frozen weights' gradients, so this
overstates the work by 2N: ``mfu_4n`` gives 4 x N_linear, benchmarks/bench_train.py's convention, beside it);
attention scores and gradient checkpointing's recomputation are not counted. Peak: dense bf16 of the GPU by name
(H100 SXM 989.4, H100 PCIe 756, H100 NVL 835, H200 989.4 TFLOP/s), null elsewhere.

Whole adapter: the saved adapter_model.safetensors holds every tensor of the PEFT model's adapter state dict, built
from the same base and LoRA options on the meta device, each with its full shape, and some lora_B tensor has moved
from its zero start.
"""

# ~660 lines on purpose: one prepared device command whose six steps share the machine record, the budgets and the
# JSON written after each step; split up, the GPU run would need six files carried and kept in step.

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEV, REPO, TOKENIZERS, missing_data
from common.data import TRAINED_SHAPES, dtype_name, load_model, load_questions, random_model, trained_model
from common.machine import PeakMemory, device_name, peak_flops, versions
from common.options import add_run_options, benchmark_parser
from common.report import gib, print_table, quiet, ratio, write_json
from common.scripts import create_dataset_argv, rank_file, run_processes, run_script
from common.timing import timed_run
from common.training import timed_epoch

STEPS = ("train_recipes", "qlora_1b", "lora_mfu_8b", "fsdp2_smoke", "zero3_smoke", "generation")
BUDGETS_S = {"train_recipes": 110, "qlora_1b": 80, "lora_mfu_8b": 110, "fsdp2_smoke": 70, "zero3_smoke": 70,
             "generation": 100}  # fmt: skip  # 540 s: one 10-minute device command with room to start
PACKAGES = ("python", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed")
ORIGINAL = {"train_tokens_per_s_h100": [15700, 21600], "mfu_8b": 0.114, "questions_per_s": 55.0}
LLAMA3_TOKENIZER = TOKENIZERS / "meta-llama-3-8b-instruct"
OURS_RECIPE, ORIGINAL_RECIPE = (
    REPO / "configs" / "smollm2_dev_split.yaml",
    REPO / "configs" / "llama2_7b_chat_original.yaml",
)
# The original recipe's settings on our model: not 4-bit, the dtype ours trains in, AdamW in torch (its paged AdamW
# is bitsandbytes'), batch 16 x 1.
ORIGINAL_OVERRIDES = ["--model_name_or_path", "embedded", "--load_in_4bit", "false", "--dtype", "auto", "--fp16",
                      "false", "--fp16_overflow_guard", "false", "--optim", "adamw_torch",
                      "--gradient_accumulation_steps", "1"]  # fmt: skip


class Skipped(Exception):
    """A step that cannot run here: its reason goes to the JSON as the step's ``reason``, beside ``details`` (what
    did run)."""

    def __init__(self, reason: str, details: dict | None = None):
        super().__init__(reason)
        self.details = details or {}


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--dry_run", action="store_true", help="every step at tiny sizes, on a CPU")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument("--budget_s", type=float, default=None, help="seconds each step may take (default: per step)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer of the 1B / 8B shapes (default: Llama-3's)")
    add_run_options(parser, seed=0)
    parser.set_defaults(json_out="gpu_check.json")
    # Internal: one step in this process (the parent runs each in a fresh subprocess).
    parser.add_argument("--step", choices=STEPS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result_file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        parser.error(f"--steps {','.join(unknown)}: not a step; choose from {', '.join(STEPS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.step:  # a child process: one step, its figures to --result_file
        return run_step_here(args)
    if missing_data(DEV):
        return 1
    start = time.perf_counter()
    report = {
        "command": " ".join(["python", "benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
        "dry_run": args.dry_run,
        "device": device_name(),
        "versions": installed_versions(),
        "budgets_s": {name: budget(args, name) for name in args.steps},
        "original": ORIGINAL,
        "steps": {},
    }
    with tempfile.TemporaryDirectory() as work:
        for name in args.steps:
            # Each step in a fresh process (its memory its own, a crash its own), then the JSON as it stands.
            print(f"{name}...", file=sys.stderr, flush=True)
            report["steps"][name] = run_step(args, name, Path(work))
            report["wall_s"] = time.perf_counter() - start
            write_json(args.json_out, report)
    print_summary(report)
    print(f"wall time     {report['wall_s']:.0f} s for the whole check; the figures are in {args.json_out}")
    return 0


# --dry_run on a CPU: the budgets are for GPU sizes; a busy CPU, and DeepSpeed compiling its CPU collectives with g++
# the first time it runs on a machine (1-2 minutes), need more
DRY_RUN_BUDGET_S = 300


def budget(args, name: str) -> float:
    if args.budget_s is not None:
        return args.budget_s
    return DRY_RUN_BUDGET_S if args.dry_run else BUDGETS_S[name]


def installed_versions() -> dict:
    """The versions of :data:`PACKAGES`, None where one is not installed."""
    found = {}
    for name in PACKAGES:
        try:
            found |= versions(name)
        except Exception:  # PackageNotFoundError: not installed here
            found[name] = None
    return found


def run_step(args, name: str, work: Path) -> dict:
    """Run step ``name`` in a fresh process within its budget; its record (failed, with why, if the process died)."""
    argv = [str(Path(__file__).resolve()), "--step", name, "--work_dir", str(work), "--seed", str(args.seed)]
    argv += ["--result_file", str(work / f"{name}.json")] + (["--dry_run"] if args.dry_run else [])
    argv += ["--tokenizer", args.tokenizer] if args.tokenizer else []
    limit = budget(args, name)
    start = time.perf_counter()
    try:
        result = run_processes(argv, work / f"{name}.json", timeout=limit)[0]
    except subprocess.TimeoutExpired:
        result = {"status": "failed", "error": f"over its budget of {limit:.0f} s (--budget_s): killed"}
    except subprocess.CalledProcessError as e:
        result = {"status": "failed", "error": f"its process exited with {e.returncode} (its stderr is above)"}
    return {**result, "seconds": time.perf_counter() - start}


def run_step_here(args) -> int:
    """Run --step in this process; write its record to --result_file, an exception as a failed step's one line."""
    quiet()
    work = Path(args.work_dir)
    try:
        result = {"status": "ok", **STEP_FUNCTIONS[args.step](args, work)}
    except Skipped as e:
        result = {"status": "skipped", "reason": str(e), **e.details}
    except Exception as e:  # any failure of the step: recorded, and the next step runs
        lines = str(e).strip().splitlines()
        result = {"status": "failed", "error": f"{type(e).__name__}: {lines[0] if lines else ''}"}
    rank_file(args.result_file, 0).write_text(json.dumps(result), encoding="utf-8")
    return 0


# ---------------------------------------------------------------------------------------------------- helpers


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sizes(args, gpu: dict, dry: dict) -> argparse.Namespace:
    """The step's sizes: ``dry`` with --dry_run, else ``gpu``."""
    return argparse.Namespace(**(dry if args.dry_run else gpu))


def tokenized_examples(args, work: Path, tokenizer: str, examples: int, batch_size: int, max_length: int):
    """The first ``examples`` SQuAD v2 training rows of the dev-split protocol (seeded shuffle), tokenized with
    ``tokenizer`` (answer-only labels), whole batches: benchmarks/bench_train.py's data; (dataset, its summary)."""
    from bench_train import prepare_data
    from datasets import load_from_disk

    folder = work / f"data-{Path(tokenizer).name}-{examples}-{batch_size}-{max_length}"
    options = argparse.Namespace(
        seed=args.seed, examples=examples, model="tiny", tokenizer=tokenizer, max_length=max_length,
        batch_size=batch_size, processes=None,
    )  # fmt: skip
    summary_file = folder.with_suffix(".json")  # an earlier step's: the same examples, tokenized once
    if not summary_file.exists():
        summary_file.write_text(json.dumps(prepare_data(options, folder)), encoding="utf-8")
    return load_from_disk(str(folder)), json.loads(summary_file.read_text(encoding="utf-8"))


def quick_config(output_dir: str, batch_size: int, max_length: int, warmup_steps: int, seed: int, **changes):
    """A TrainConfig for a timed epoch (no evaluation, checkpoints or logs) with ``changes``."""
    from llama_squad.config import TrainConfig

    return TrainConfig(
        output_dir=output_dir, max_length=max_length, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1, num_train_epochs=1, max_steps=warmup_steps, warmup_steps=0,
        eval_strategy="no", save_strategy="no", logging_steps=10**6, report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, seed=seed, data_seed=seed, **changes,
    )  # fmt: skip


def epoch_figures(epoch: dict) -> dict:
    """What the JSON keeps of a timed epoch."""
    keep = ("steps", "non_pad_tokens", "padded_positions", "padding_fraction", "seconds", "tokens_per_s",
            "peak_memory_bytes", "memory_delta_bytes")  # fmt: skip
    return {key: epoch[key] for key in keep}


def shape_tokenizer(args) -> str:
    """The tokenizer of the 1B / 8B shapes: --tokenizer, Llama-3's, or the embedded model's (the lent GPU machine has
    no ../shared/tokenizers: the shape keeps its own vocabulary size)."""
    if args.tokenizer:
        return args.tokenizer
    if LLAMA3_TOKENIZER.exists():
        return str(LLAMA3_TOKENIZER)
    from llama_squad.models import resolve_model_path

    return resolve_model_path("embedded")


def shape_fields(args, name: str) -> dict:
    """LlamaConfig fields of a GPU shape of benchmarks/bench_qlora.py, or of the tiny model with --dry_run."""
    from bench_qlora import GPU_SHAPES

    if args.dry_run:
        return dict(TRAINED_SHAPES["tiny"])
    return dict(GPU_SHAPES[name])


# -------------------------------------------------------------------------------------------------------- steps


def recipe_arm(recipe: Path, overrides: list[str], output_dir: str, warmup_steps: int, batch_size: int, sz):
    """(ModelArguments, TrainConfig) of ``recipe`` with ``overrides``, for a timed epoch at ``batch_size``."""
    from llama_squad.cli import parse_dataclasses
    from llama_squad.config import ModelArguments, ScriptArguments, TrainConfig

    argv = ["--config", str(recipe), *overrides, "--output_dir", output_dir, "--max_length", str(sz.max_length),
            "--per_device_train_batch_size", str(batch_size), "--num_train_epochs", "1", "--max_steps",
            str(warmup_steps), "--warmup_steps", "0", "--eval_strategy", "no", "--save_strategy", "no",
            "--logging_steps", str(10**6), "--report_to", "none", "--disable_tqdm", "true",
            "--dataloader_num_workers", "0"]  # fmt: skip
    model_args, _, config = parse_dataclasses([ModelArguments, ScriptArguments, TrainConfig], argv)
    return model_args, config


def train_recipes(args, work: Path) -> dict:
    """Our recipe against the original's settings on the same model and examples, one timed epoch each."""
    import torch
    from transformers import set_seed

    from llama_squad.models import load_tokenizer, resolve_model_path
    from llama_squad.training import build_trainer, lora_config

    sz = sizes(
        args,
        gpu=dict(model="embedded", examples=1024, batch_size=16, max_length=1024, warmup=2),
        dry=dict(model="tiny", examples=4, batch_size=2, max_length=512, warmup=1),
    )
    tokenizer_path = (
        resolve_model_path("embedded") if sz.model == "embedded" else str(TOKENIZERS / "smollm2-135m-instruct")
    )
    train, data = tokenized_examples(args, work, tokenizer_path, sz.examples, sz.batch_size, sz.max_length)
    arms = {
        "ours": (OURS_RECIPE, ["--model_name_or_path", "embedded"]),
        "original": (ORIGINAL_RECIPE, ORIGINAL_OVERRIDES),
    }
    results = {}
    for name, (recipe, overrides) in arms.items():
        with tempfile.TemporaryDirectory() as out:
            model_args, config = recipe_arm(recipe, overrides, out, sz.warmup, sz.batch_size, sz)
            if name == "original":
                config.pad_to_multiple_of = (
                    sz.max_length
                )  # every batch padded to max_length, as bench_train's baseline
            set_seed(args.seed)
            tokenizer = load_tokenizer(tokenizer_path)
            model = trained_model(sz.model, tokenizer, args.seed, None, sz.max_length)
            trainer = build_trainer(model, tokenizer, config, train, None, lora_config(model_args))
            epoch = timed_epoch(trainer, sz.warmup)
        results[name] = {
            "recipe": str(recipe.relative_to(REPO)),
            "lora": {"r": model_args.lora_r, "alpha": model_args.lora_alpha, "dropout": model_args.lora_dropout},
            "learning_rate": config.learning_rate,
            "lr_scheduler_type": str(getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type)),
            "optim": str(getattr(config.optim, "value", config.optim)),
            "gradient_checkpointing": bool(config.gradient_checkpointing),
            "padded_to": "max_length" if name == "original" else "longest row of each batch",
            "packing": bool(config.packing),
            "padding_free": False,  # build_trainer's collator: off unless --padding_free (which needs flash-attn)
            "bf16": bool(config.bf16),
            "dtype": dtype_name(model),
            **epoch_figures(epoch),
        }
        del trainer, model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    ours, original = results["ours"], results["original"]
    return {
        "model": "SmolLM2-135M-Instruct (embedded)" if sz.model == "embedded" else "tiny random Llama (dry run)",
        "batch_size": sz.batch_size,
        "max_length": sz.max_length,
        "data": data,
        "arms": results,
        "ratio_tokens_per_s": ratio(ours, original, "tokens_per_s"),
        "ratio_peak_memory": ratio(ours, original, "peak_memory_bytes"),
        "goal": "ours / original tokens/s >= 2 (the original measured 15.7-21.6k tokens/s on an H100)",
    }


def qlora_1b(args, work: Path) -> dict:
    """QLoRA on a random Llama-3.2-1B shape saved to disk and loaded 4-bit by the project's loader."""
    import importlib.util

    import torch
    from bench_qlora import weight_bytes
    from transformers import set_seed

    from llama_squad.config import ModelArguments
    from llama_squad.models import load_model as load_4bit
    from llama_squad.models import load_tokenizer, quantization_name
    from llama_squad.training import build_trainer, lora_config

    if importlib.util.find_spec("bitsandbytes") is None:
        raise Skipped("bitsandbytes is not installed (pip install bitsandbytes; pack.sh --bnb on the lent machine)")
    sz = sizes(args, gpu=dict(examples=256, batch_size=16, max_length=1024, warmup=2),
               dry=dict(examples=4, batch_size=2, max_length=512, warmup=1))  # fmt: skip
    tokenizer_path = str(TOKENIZERS / "smollm2-135m-instruct") if args.dry_run else shape_tokenizer(args)
    train, data = tokenized_examples(args, work, tokenizer_path, sz.examples, sz.batch_size, sz.max_length)
    tokenizer = load_tokenizer(tokenizer_path)
    folder = work / "llama-3.2-1b-shape"
    model = random_model(tokenizer, seed=args.seed, **shape_fields(args, "Llama-3.2-1B"))
    parameters = model.num_parameters()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    options = ModelArguments(model_name_or_path=str(folder), load_in_4bit=True, lora_r=16, lora_alpha=32)
    set_seed(args.seed)
    memory = PeakMemory()
    memory.start()
    model = load_4bit(folder, options)
    loaded = {"weights_bytes": weight_bytes(model), "loading_peak_bytes": memory.peak()}
    with tempfile.TemporaryDirectory() as out:
        config = quick_config(out, sz.batch_size, sz.max_length, sz.warmup, args.seed)
        trainer = build_trainer(model, tokenizer, config, train, None, lora_config(options))
        epoch = timed_epoch(trainer, sz.warmup)
    return {
        "model": "random Llama-3.2-1B shape" if not args.dry_run else "tiny random Llama (dry run)",
        "parameters": parameters,
        "tokenizer": Path(tokenizer_path).name,
        "quantization": quantization_name(options),
        "compute_dtype": dtype_name(model),
        "lora": {"r": 16, "alpha": 32},
        "batch_size": sz.batch_size,
        "data": data,
        **loaded,
        **epoch_figures(epoch),
        "peak_memory": "torch.cuda.max_memory_allocated during the timed epoch" if cuda() else "peak RSS (CPU)",
    }


def lora_mfu_8b(args, work: Path) -> dict:
    """LoRA with gradient checkpointing on a random Llama-3.1-8B shape built on the GPU in bf16: tokens/s and MFU."""
    import torch
    from transformers import set_seed

    from llama_squad.config import ModelArguments
    from llama_squad.models import load_tokenizer
    from llama_squad.training import build_trainer, lora_config

    sz = sizes(args, gpu=dict(examples=160, batch_size=16, max_length=1024, warmup=2),
               dry=dict(examples=4, batch_size=2, max_length=512, warmup=1))  # fmt: skip
    tokenizer_path = str(TOKENIZERS / "smollm2-135m-instruct") if args.dry_run else shape_tokenizer(args)
    train, data = tokenized_examples(args, work, tokenizer_path, sz.examples, sz.batch_size, sz.max_length)
    tokenizer = load_tokenizer(tokenizer_path)
    set_seed(args.seed)
    model = random_model(tokenizer, seed=args.seed, **shape_fields(args, "Llama-3.1-8B"))
    parameters = model.num_parameters()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))  # lm_head included
    options = ModelArguments(lora_r=16, lora_alpha=32)
    with tempfile.TemporaryDirectory() as out:
        config = quick_config(out, sz.batch_size, sz.max_length, sz.warmup, args.seed, gradient_checkpointing=True)
        trainer = build_trainer(model, tokenizer, config, train, None, lora_config(options))
        epoch = timed_epoch(trainer, sz.warmup)
    device, dtype = device_name(), dtype_name(model)
    peak = peak_flops(device, dtype)
    tokens_per_s = epoch["tokens_per_s"]
    return {
        "model": "random Llama-3.1-8B shape" if not args.dry_run else "tiny random Llama (dry run)",
        "parameters": parameters,
        "linear_parameters": linear,
        "tokenizer": Path(tokenizer_path).name,
        "dtype": dtype,
        "gradient_checkpointing": True,
        "lora": {"r": 16, "alpha": 32},
        "batch_size": sz.batch_size,
        "data": data,
        **epoch_figures(epoch),
        "peak_tflops": peak / 1e12 if peak else None,
        "mfu": 6 * parameters * tokens_per_s / peak if peak else None,
        "mfu_formula": "6 x parameters x non-pad tokens/s / peak bf16 dense FLOP/s (the original's 6N convention)",
        "mfu_4n": 4 * linear * tokens_per_s / peak if peak else None,
        "mfu_4n_formula": "4 x linear-layer parameters x tokens/s / peak (LoRA: no frozen-weight gradients)",
        "mfu_note": None if peak else f"no bf16 peak known for {device} computing in {dtype}: MFU not computed",
    }


def smoke_model(args, work: Path) -> str:
    """The model train.py trains in the smoke runs: the embedded model, or a tiny random one saved with --dry_run."""
    if not args.dry_run:
        return "embedded"
    from llama_squad.models import load_tokenizer

    folder = work / "tiny-model"
    if not (folder / "config.json").exists():
        tokenizer = load_tokenizer(TOKENIZERS / "smollm2-135m-instruct")
        random_model(tokenizer, seed=args.seed, **TRAINED_SHAPES["tiny"]).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def sharded_smoke(args, work: Path, engine: str) -> dict:
    """train.py under accelerate launch with one process of ``engine`` (fsdp2, zero3), a few steps; the engine's
    checkpoint and the whole adapter checked."""
    import os
    import socket

    if engine == "zero3":
        try:
            import deepspeed  # noqa: F401
        except Exception as e:  # not installed, or its native ops do not build here
            raise Skipped(
                f"deepspeed does not import ({type(e).__name__}: {e}); pip install -e '.[deepspeed]'"
            ) from None
    data = work / "smoke-data"
    if not (data / "dataset_dict.json").exists():
        run_script(create_dataset_argv(data, args.seed))
    model = smoke_model(args, work)
    out = work / f"{engine}-out"
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {"fsdp2": ["fsdp.yaml", "--fsdp_version", "2"], "zero3": ["deepspeed_zero3.yaml"]}[engine]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "configs" / "accelerate" / config[0]), *config[1:], "--num_processes", "1",
              "--main_process_port", str(port)]  # fmt: skip
    if not cuda():
        launch += ["--mixed_precision", "no"]  # the configs' bf16 needs a GPU here
    steps, lora_r, examples = (2, 4, 4) if args.dry_run else (3, 8, 16)
    train_args = [
        str(REPO / "train.py"), "--model_name_or_path", model, "--dataset_path", str(data), "--output_dir", str(out),
        "--max_steps", str(steps), "--save_steps", str(steps), "--per_device_train_batch_size", "2",
        "--max_train_examples", str(examples), "--max_eval_examples", "0", "--eval_strategy", "no",
        "--lora_r", str(lora_r), "--lora_alpha", str(2 * lora_r), "--learning_rate", "1e-3", "--warmup_steps", "0",
        "--logging_steps", "1",
        "--report_to", "none", "--disable_tqdm", "true", "--optim", "adamw_torch", "--resume_from_checkpoint", "no",
        "--use_cpu", "false", "--seed", str(args.seed),
    ]  # fmt: skip
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    done = subprocess.run([*launch, *train_args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=budget(args, f"{engine}_smoke") - 10)  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        errors = [line for line in done.stdout.splitlines() if "Error" in line or "ERROR" in line]
        raise RuntimeError(
            f"train.py exited with {done.returncode}: {(errors or done.stdout.splitlines() or [''])[-1]}"
        )
    checkpoint = out / f"checkpoint-{steps}"
    held = sorted(p.name for p in checkpoint.iterdir()) if checkpoint.is_dir() else []
    engine_files = [n for n in held if (n.startswith(("pytorch_model_fsdp", "optimizer_0")) if engine == "fsdp2"
                                         else n.startswith("global_step"))]  # fmt: skip
    result = {
        "launch": " ".join(["accelerate launch", *launch[3:], "train.py", *train_args[1:]]),
        "train_seconds": seconds,
        "steps": steps,
        "checkpoint_files": held,
        "engine_files": engine_files,
        **adapter_wholeness(model, out, lora_r),
    }
    if not engine_files:
        reason = (
            f"accelerate ran {config[0]} as a plain single process here (checkpoint-{steps} holds {', '.join(held)}: "
            "no sharded state), so nothing was sharded"
        )
        if not cuda():
            raise Skipped(f"{reason}: {engine} needs a GPU (train.py and the adapter check ran)", result)
        raise RuntimeError(reason)
    if not result["adapter_whole"]:
        raise RuntimeError(f"the adapter is not whole: {result['adapter_problems']}")
    return result


def adapter_wholeness(model: str, out: Path, lora_r: int) -> dict:
    """Whether ``out``'s adapter holds every tensor, full-shaped, of the PEFT model train.py built (the same base and
    LoRA options, on the meta device), and has trained (a lora_B moved from zero)."""
    import torch
    from peft import get_peft_model, get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from llama_squad.checkpoints import adapter_problem
    from llama_squad.config import ModelArguments
    from llama_squad.models import resolve_model_path
    from llama_squad.training import lora_config

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_path(model)))
    peft_model = get_peft_model(base, lora_config(ModelArguments(lora_r=lora_r, lora_alpha=2 * lora_r)))
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model).items()}
    problem = adapter_problem(out)
    tensors = {} if problem else load_file(out / "adapter_model.safetensors")
    saved = {k: tuple(v.shape) for k, v in tensors.items()}
    problems = [problem] if problem else []
    missing = sorted(set(expected) - set(saved))
    wrong = sorted(k for k in set(expected) & set(saved) if expected[k] != saved[k])
    if missing:
        problems.append(f"{len(missing)} tensors missing, e.g. {missing[0]}")
    if wrong:
        problems.append(
            f"{len(wrong)} tensors of the wrong shape, e.g. {wrong[0]}: {saved[wrong[0]]} for {expected[wrong[0]]}"
        )
    trained = sum(int(t.abs().sum() > 0) for k, t in tensors.items() if "lora_B" in k)
    if tensors and not trained:
        problems.append("every lora_B is still zero: the saved adapter is untrained")
    return {
        "adapter_tensors_expected": len(expected),
        "adapter_tensors_saved": len(saved),
        "adapter_lora_b_trained": trained,
        "adapter_whole": not problems,
        "adapter_problems": problems,
    }


def fsdp2_smoke(args, work: Path) -> dict:
    return sharded_smoke(args, work, "fsdp2")


def zero3_smoke(args, work: Path) -> dict:
    return sharded_smoke(args, work, "zero3")


def generation(args, work: Path) -> dict:
    """test.py's answering of the dev-split test questions at batch 64 with the embedded model: questions/s."""
    from llama_squad.evaluation import Answerer
    from llama_squad.generation import GenerationOptions, Generator

    sz = sizes(args, gpu=dict(model="embedded", limit=None, batch_size=64, max_new_tokens=None),
               dry=dict(model="tiny", limit=4, batch_size=4, max_new_tokens=4))  # fmt: skip
    questions, total = load_questions(sz.limit, None)
    model, tokenizer = load_model(sz.model)
    options = GenerationOptions() if sz.max_new_tokens is None else GenerationOptions(max_new_tokens=sz.max_new_tokens)
    run = timed_run(Answerer(Generator(model, tokenizer, options)), questions, sz.batch_size, work / "answers", "ours")
    run.pop("outputs")
    return {
        "model": "SmolLM2-135M-Instruct (embedded), zero-shot" if sz.model == "embedded" else "tiny random Llama",
        "split_questions": total,
        "dtype": dtype_name(model),
        "max_new_tokens": options.max_new_tokens,
        **run,
        "ratio_questions_per_s_vs_original": run["questions_per_s"] / ORIGINAL["questions_per_s"],
    }


STEP_FUNCTIONS = {
    "train_recipes": train_recipes,
    "qlora_1b": qlora_1b,
    "lora_mfu_8b": lora_mfu_8b,
    "fsdp2_smoke": fsdp2_smoke,
    "zero3_smoke": zero3_smoke,
    "generation": generation,
}


# ------------------------------------------------------------------------------------------------------ report


def headline(name: str, step: dict) -> str:
    """One line of a step's figures, or why it has none."""
    if step["status"] == "skipped":
        return f"skipped: {step['reason'][:100]}"
    if step["status"] == "failed":
        return f"failed: {step['error'][:100]}"
    if name == "train_recipes":
        ours, original = step["arms"]["ours"], step["arms"]["original"]
        return (
            f"ours {ours['tokens_per_s']:,.0f} tok/s, original {original['tokens_per_s']:,.0f} tok/s: "
            f"{step['ratio_tokens_per_s']:.2f}x (goal >= 2x)"
        )
    if name == "qlora_1b":
        peak, weights = gib(step["peak_memory_bytes"]), gib(step["weights_bytes"])
        return f"{step['tokens_per_s']:,.0f} tok/s, peak {peak}, weights {weights}"
    if name == "lora_mfu_8b":
        mfu = "n/a" if step["mfu"] is None else f"{step['mfu']:.1%} (4N: {step['mfu_4n']:.1%})"
        return f"{step['tokens_per_s']:,.0f} tok/s, MFU {mfu} (original 11.4%)"
    if name in ("fsdp2_smoke", "zero3_smoke"):
        return (
            f"adapter {step['adapter_tensors_saved']}/{step['adapter_tensors_expected']} tensors whole, "
            f"engine files {', '.join(step['engine_files'])}"
        )
    return f"{step['questions_per_s']:.1f} questions/s on {step['questions']} (original 55)"


def print_summary(report: dict) -> None:
    print(f"device        {report['device']}")
    print("versions      " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v))
    print()
    columns = [("step", "<13"), ("status", "<7"), ("seconds", ">7.0f"), ("figures", "<")]
    print_table(columns, [[n, s["status"], s["seconds"], headline(n, s)] for n, s in report["steps"].items()])


if __name__ == "__main__":
    sys.exit(main())

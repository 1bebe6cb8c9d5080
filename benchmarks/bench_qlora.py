"""QLoRA against LoRA on the same model, in one run: training non-pad tokens/s and peak memory, each arm in a fresh
process; the bytes of the frozen weights, measured and computed from first principles for GPU-sized models; the
greedy answers of the 4-bit model with the QLoRA adapter against those of the merged model.

    # CPU (~10 min on 2 busy cores): the embedded SmolLM2-135M-Instruct
    python benchmarks/bench_qlora.py --examples 16 --batch_size 4 --max_length 512 --questions 16

    # the computed table alone (no training): SmolLM2-135M, Llama-3.2-1B, Llama-3.1-8B in bfloat16 vs NF4
    python benchmarks/bench_qlora.py --sizes_only

    # GPU (bfloat16)
    python benchmarks/bench_qlora.py --examples 512 --batch_size 16 --max_length 1024 --questions 200 \
        --json_out qlora.json

Arms: the same tokenized examples (SQuAD v2 training rows of the dev-split protocol, the first --examples of a seeded
shuffle, answer-only labels, whole batches), the same LoRA adapter (--lora_r, alpha 2r, every linear layer but the
output head), batch size, seed and TrainConfig, through ``llama_squad.training.build_trainer`` as train.py trains:

    lora    the base in the compute dtype (train.py's --dtype auto: float32 on a CPU, bfloat16 on a GPU that has it)
    qlora   the base in NF4 with double quantization (train.py --load_in_4bit), computing in that same dtype; TRL
            trains a 4-bit model's adapter in bfloat16

Each arm runs in a fresh process, so that its peak memory is its own, and is timed as benchmarks/bench_train.py
times its variants (``common.training.timed_epoch``): --warmup_steps untimed steps, then one epoch from
on_train_begin to the last on_step_end; tokens/s counts non-pad tokens. Memory: the weights are the model's
parameters and buffers plus bitsandbytes' quantization constants (absmax, their own constants, code books), counted
tensor by tensor once loaded, beside what the formula below predicts for them; peak is CUDA's allocator peak during
the epoch, or the process's peak RSS (VmHWM, reset before the epoch) on a CPU, and "loaded" the memory in use once the
model is loaded (CPU: RSS, which holds the libraries too).

Computed (first principles): a weight in bfloat16 is 2 bytes; in NF4 with double quantization 4 bits plus 8/64 + 32/(64
x 256) = 0.127 bits of quantization constants (QLoRA, Dettmers et al. 2023, section 3: one 8-bit absmax per block of
64 weights, one 32-bit constant per 256 of those), 0.516 bytes. bitsandbytes (through transformers) quantizes every
linear layer of the decoder and keeps the embeddings, norms and output head in the compute dtype. Parameter counts are
those of each model's config.json (built on the meta device: no weights loaded). The LoRA adapter (--lora_r on every
quantized layer) and its gradients and AdamW moments are the same in both arms, as are the activations: QLoRA saves
on the frozen weights only.

Answers (--questions N): the qlora arm's adapter, saved after its epoch, answers the first N dev-split test questions
(shuffled with --seed) through test.py's pipeline, greedy: on the 4-bit model, as test.py --load_in_4bit
--adapter_path does, and merged into the base reloaded in the compute dtype, as train.py --merge does. Their raw
outputs are compared one by one. A few training steps move the adapter little: the difference is mostly the NF4
rounding of the base weights, which the merged model does not have.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import DEV, missing_data
from common.data import dev_split, dtype_name, load_questions
from common.machine import device_name, load_average, load_line, proc_status_kib, versions_line
from common.options import add_run_options, benchmark_parser
from common.report import gib, identical_outputs, print_table, quiet, ratio, without_outputs, write_json
from common.scripts import rank_file, run_processes
from common.training import timed_epoch

ARMS = ("lora", "qlora")
FORWARDED = ("model", "batch_size", "max_length", "lora_r", "warmup_steps", "seed")
# QLoRA's NF4 with double quantization, in bits per weight: 4-bit codes, an 8-bit absmax per block of 64 weights,
# a 32-bit constant per 256 absmax (Dettmers et al. 2023, section 3).
NF4_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)
# LlamaConfig fields of the GPU-sized models, from their config.json on the Hub (meta-llama/Llama-3.2-1B,
# meta-llama/Llama-3.1-8B); SmolLM2-135M's is the embedded model's own.
GPU_SHAPES = {
    "Llama-3.2-1B": dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
    ),
    "Llama-3.1-8B": dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
    ),
}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", default="embedded", help="model_name_or_path (default: the embedded SmolLM2-135M)")
    parser.add_argument("--examples", type=int, default=None, help="training examples (default: 16 CPU, 512 GPU)")
    parser.add_argument("--batch_size", type=int, default=4, help="per-device train batch size")
    parser.add_argument("--max_length", type=int, default=512, help="longer examples are dropped (and counted)")
    parser.add_argument("--lora_r", type=int, default=16, help="LoRA rank (alpha = 2r), on all linear layers")
    parser.add_argument("--warmup_steps", type=int, default=1, help="untimed steps before the timed epoch")
    parser.add_argument("--questions", type=int, default=0, help="answers compared: 4-bit + adapter vs merged")
    parser.add_argument("--sizes_only", action="store_true", help="print the computed table and stop")
    parser.add_argument("--answer_batch_size", type=int, default=8, help="questions per generate call (answers)")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="greedy answers stop after this many tokens")
    add_run_options(parser, seed=0)
    # Internal: one arm in this process (the parent runs each in a fresh subprocess).
    parser.add_argument("--arm", choices=ARMS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result_file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--adapter_dir", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.arm:  # a child process: one arm, its figures to --result_file
        return train_arm(args)
    quiet()

    # 1. What the frozen weights cost on a GPU, computed from the models' configs.
    sizes = computed_sizes(args.model, args.lora_r)
    print_sizes(sizes, args.lora_r)
    if args.sizes_only:
        return 0
    if missing_data(DEV):
        return 1
    start, load_before = time.perf_counter(), load_average()
    if args.examples is None:
        import torch

        args.examples = 512 if torch.cuda.is_available() else 16

    with tempfile.TemporaryDirectory() as tmp:
        # 2. The same tokenized examples for both arms.
        print(f"tokenizing {args.examples} SQuAD v2 training examples...", file=sys.stderr)
        data = prepare_data(args, Path(tmp) / "data")
        # 3. Each arm trains one timed epoch in a fresh process; the qlora arm keeps its adapter.
        results = {arm: run_arm(args, arm, Path(tmp)) for arm in ARMS}
        print_arms(args, data, results, sizes)
        # 4. The 4-bit model with that adapter against the merged model, on the same questions.
        answers = compare_answers(args, Path(tmp)) if args.questions else None

    print(load_line(load_before, load_average()))
    print(f"wall time     {time.perf_counter() - start:.0f} s for the whole benchmark")
    if args.json_out:
        given = {k: v for k, v in vars(args).items() if v is not None}
        write_json(args.json_out, {"args": given, "sizes": sizes, "data": data, "arms": results, "answers": answers})
    return 0


# ---------------------------------------------------------------------------------------------- computed sizes


def parameter_counts(config) -> dict:
    """The parameters of a model of ``config`` (built on the meta device): in all, in the decoder's linear layers
    (what bitsandbytes quantizes), and LoRA's per unit of rank on those layers (in + out features each)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    return {
        "total": sum(p.numel() for p in model.parameters()),  # a tied head counted once
        "quantized": sum(m.weight.numel() for m in linears),
        "lora_per_rank": sum(m.in_features + m.out_features for m in linears),
    }


def weight_bytes_formula(counts: dict, float_bytes: float, quantized: bool) -> float:
    """The bytes of the frozen weights: every weight in ``float_bytes``, or the decoder's linear layers in NF4 with
    double quantization (:data:`NF4_DQ_BITS`) and the rest in ``float_bytes``."""
    if not quantized:
        return counts["total"] * float_bytes
    return counts["quantized"] * NF4_DQ_BITS / 8 + (counts["total"] - counts["quantized"]) * float_bytes


def computed_sizes(model: str, lora_r: int) -> list[dict]:
    """For --model (its config) and the GPU-sized shapes: parameters, weights in bfloat16 and in NF4 with double
    quantization, and the LoRA adapter's parameters at ``lora_r``."""
    from transformers import AutoConfig, LlamaConfig

    from llama_squad.models import resolve_model_path

    configs = {"SmolLM2-135M" if model == "embedded" else model: AutoConfig.from_pretrained(resolve_model_path(model))}
    configs |= {name: LlamaConfig(**fields) for name, fields in GPU_SHAPES.items()}
    rows = []
    for name, config in configs.items():
        counts = parameter_counts(config)
        bf16, nf4 = weight_bytes_formula(counts, 2, False), weight_bytes_formula(counts, 2, True)
        rows.append(
            {
                "model": name,
                **counts,
                "bf16_bytes": bf16,
                "nf4_bytes": nf4,
                "lora_params": lora_r * counts["lora_per_rank"],
            }
        )
    return rows


def print_sizes(rows: list[dict], lora_r: int) -> None:
    print(
        f"frozen weights on a GPU, computed: bfloat16 = 2 bytes/weight; NF4 + double quantization = {NF4_DQ_BITS:.3f} "
        f"bits = {NF4_DQ_BITS / 8:.4f} bytes/weight on the decoder's linear layers (QLoRA, Dettmers et al. 2023), "
        "the rest (embeddings, norms, output head) in bfloat16"
    )
    columns = [("model", "<14"), ("parameters", ">13,"), ("in linear layers", ">16,"), ("bf16 GiB", ">8.3f"),
               ("NF4 GiB", ">7.3f"), ("saved GiB", ">9.3f"), ("NF4/bf16", ">8.3f"), (f"LoRA r={lora_r}", ">12,"),
               ("LoRA state GiB", ">14.3f")]  # fmt: skip
    print_table(columns, [
        [r["model"], r["total"], r["quantized"], r["bf16_bytes"] / 2**30, r["nf4_bytes"] / 2**30,
         (r["bf16_bytes"] - r["nf4_bytes"]) / 2**30, r["nf4_bytes"] / r["bf16_bytes"], r["lora_params"],
         16 * r["lora_params"] / 2**30]
        for r in rows
    ])  # fmt: skip
    print(
        "LoRA state: the adapter, its gradients and AdamW's two moments, 16 bytes a LoRA parameter in float32, the "
        "same in both arms (TRL trains a 4-bit model's adapter in bfloat16: 8 bytes); activations are the same too"
    )
    print()


# ------------------------------------------------------------------------------------------------ data and arms


def prepare_data(args, folder: Path) -> dict:
    """Tokenize the first --examples rows of a seeded shuffle of the SQuAD v2 training split into ``folder``, whole
    batches only."""
    import statistics

    from llama_squad.models import load_tokenizer, resolve_model_path
    from llama_squad.tokenization import tokenize_dataset

    train = dev_split()["train"].shuffle(seed=args.seed)
    train = train.select(range(min(args.examples, len(train))))
    tokenized, dropped = tokenize_dataset(train, load_tokenizer(resolve_model_path(args.model)), args.max_length)
    usable = len(tokenized) // args.batch_size * args.batch_size
    if usable == 0:
        raise SystemExit(f"--examples {args.examples}: fewer than one batch of examples fits --max_length")
    tokenized = tokenized.select(range(usable))
    tokenized.save_to_disk(str(folder))
    lengths = [len(ids) for ids in tokenized["input_ids"]]
    return {"examples": usable, "dropped_too_long": dropped, "length_mean": statistics.fmean(lengths)}


def run_arm(args, arm: str, tmp: Path) -> dict:
    """Train ``arm`` in a fresh process; its figures."""
    print(f"training {arm}...", file=sys.stderr, flush=True)
    argv = [str(Path(__file__).resolve()), *(x for name in FORWARDED for x in (f"--{name}", str(getattr(args, name))))]
    result_file = tmp / f"{arm}.json"
    argv += ["--arm", arm, "--data_dir", str(tmp / "data"), "--result_file", str(result_file)]
    if arm == "qlora" and args.questions:
        argv += ["--adapter_dir", str(tmp / "adapter")]
    return run_processes(argv, result_file)[0]


def memory_in_use() -> int:
    """CUDA's allocated bytes, or this process's RSS on a CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.memory_allocated()
    return proc_status_kib("VmRSS") * 1024


def weight_bytes(model) -> int:
    """The bytes of ``model``'s parameters and buffers, and of bitsandbytes' quantization constants (absmax, nested
    constants, code books), which its 4-bit layers hold outside them."""
    import torch

    seen, total = set(), 0

    def add(tensor) -> None:
        nonlocal total
        if isinstance(tensor, torch.Tensor) and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()

    for tensor in [*model.parameters(), *model.buffers()]:
        add(tensor)
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        while state is not None:
            for name in ("absmax", "code", "offset"):
                add(getattr(state, name, None))
            state = getattr(state, "state2", None)
    return total


def train_arm(args) -> int:
    """Load the model (4-bit for qlora), train one timed epoch with the LoRA adapter, write the figures."""
    quiet()
    import torch
    from datasets import load_from_disk
    from transformers import set_seed

    from llama_squad.config import ModelArguments, TrainConfig
    from llama_squad.models import load_model, load_tokenizer, resolve_model_path
    from llama_squad.training import build_trainer, lora_config

    set_seed(args.seed)
    options = ModelArguments(
        model_name_or_path=args.model, load_in_4bit=args.arm == "qlora", lora_r=args.lora_r, lora_alpha=2 * args.lora_r
    )
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    model = load_model(path, options)
    weights, loaded, loading_peak = weight_bytes(model), memory_in_use(), proc_status_kib("VmHWM")
    train = load_from_disk(args.data_dir)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            output_dir=out, max_length=args.max_length, per_device_train_batch_size=args.batch_size,
            num_train_epochs=1, max_steps=args.warmup_steps, warmup_steps=0, eval_strategy="no", save_strategy="no",
            logging_steps=10**6, report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=args.seed,
            data_seed=args.seed,
        )  # fmt: skip
        trainer = build_trainer(model, tokenizer, config, train, None, lora_config(options))
        epoch = timed_epoch(trainer, args.warmup_steps)
        if args.adapter_dir:
            trainer.save_model(args.adapter_dir)
    adapter = [p for p in trainer.model.parameters() if p.requires_grad]
    result = {
        "arm": args.arm,
        **epoch,
        "weight_bytes": weights,
        "loaded_bytes": loaded,
        "loading_peak_bytes": loading_peak * 1024 if loading_peak and not torch.cuda.is_available() else None,
        "lora_params": sum(p.numel() for p in adapter),
        "adapter_dtype": str(adapter[0].dtype).removeprefix("torch."),
        "dtype": dtype_name(model),  # the compute dtype (the first parameters, the embeddings, are never quantized)
        "device": device_name(),
        "threads": torch.get_num_threads(),
    }
    rank_file(args.result_file, 0).write_text(json.dumps(result), encoding="utf-8")
    return 0


# ------------------------------------------------------------------------------------------------------ report


def print_arms(args, data: dict, results: dict, sizes: list[dict]) -> None:
    """What was measured, the two arms, QLoRA over LoRA; the measured weights against the formula's."""
    lora, qlora = results["lora"], results["qlora"]
    float_bytes = 4 if lora["dtype"] == "float32" else 2
    counts = sizes[0]
    print(f"device        {lora['device']}")
    print(f"versions      {versions_line('torch', 'transformers', 'trl', 'peft', 'bitsandbytes')}")
    print(
        f"model         {args.model}, computing in {lora['dtype']}, LoRA r={args.lora_r} on all linear layers "
        f"({lora['lora_params']:,} parameters; adapter in {lora['adapter_dtype']} for lora, {qlora['adapter_dtype']} "
        "for qlora)"
    )
    print(
        f"data          {data['examples']} SQuAD v2 training examples (seed {args.seed}), {data['dropped_too_long']} "
        f"dropped > max_length {args.max_length}; tokens/example mean {data['length_mean']:.0f}; "
        f"batch {args.batch_size}"
    )
    print(f"timing        one epoch after {args.warmup_steps} untimed warm-up step(s), each arm in a fresh process")
    print()
    columns = [("arm", "<6"), ("steps", ">5"), ("non-pad tok/s", ">13,.1f"), ("tok/CPU-s", ">9,.1f"),
               ("weights MiB", ">11,.1f"), ("formula MiB", ">11,.1f"), ("loaded", ">10"), ("peak", ">10"),
               ("Δ peak", ">10")]  # fmt: skip
    rows = []
    for arm, r in results.items():
        formula = weight_bytes_formula(counts, float_bytes, arm == "qlora")
        rows.append([arm, r["steps"], r["tokens_per_s"], r["non_pad_tokens"] / r["cpu_seconds"],
                     r["weight_bytes"] / 2**20, formula / 2**20, gib(r["loaded_bytes"]), gib(r["peak_memory_bytes"]),
                     gib(r["memory_delta_bytes"])])  # fmt: skip
    print_table(columns, rows)
    print()
    cpu = 1 / ratio(qlora, lora, "cpu_seconds")
    print(
        f"qlora / lora: tokens/s {ratio(qlora, lora, 'tokens_per_s'):.2f}x (per CPU-second {cpu:.2f}x), weights "
        f"{ratio(qlora, lora, 'weight_bytes'):.3f}x, loaded {ratio(qlora, lora, 'loaded_bytes'):.2f}x, peak "
        f"{ratio(qlora, lora, 'peak_memory_bytes'):.2f}x, Δ peak {ratio(qlora, lora, 'memory_delta_bytes'):.2f}x"
    )
    if lora["loading_peak_bytes"]:
        print(
            f"peak RSS while loading: lora {gib(lora['loading_peak_bytes'])}, "
            f"qlora {gib(qlora['loading_peak_bytes'])} (a 4-bit model is read in the compute dtype, then quantized "
            "layer by layer)"
        )
    print()


def compare_answers(args, tmp: Path) -> dict:
    """The first --questions dev-split test questions answered by the 4-bit model with the qlora arm's adapter and by
    the model merged in the compute dtype, as test.py answers them; how many raw outputs are identical."""
    from common.timing import timed_run

    from llama_squad.config import ModelLoadingArguments
    from llama_squad.evaluation import load_answerer
    from llama_squad.export import merge_adapter
    from llama_squad.generation import GenerationOptions
    from llama_squad.models import load_tokenizer, resolve_dtype, resolve_model_path

    print(f"answering {args.questions} questions with the 4-bit model + adapter, then merged...", file=sys.stderr)
    questions, _ = load_questions(args.questions, args.seed)
    adapter, merged = tmp / "adapter", tmp / "merged"
    merge_adapter(resolve_model_path(args.model), adapter, merged, resolve_dtype("auto"), load_tokenizer(adapter))
    options = GenerationOptions(max_new_tokens=args.max_new_tokens)
    arms = {
        "4bit + adapter": dict(model_args=ModelLoadingArguments(args.model, load_in_4bit=True), adapter_path=adapter),
        "merged": dict(model_args=ModelLoadingArguments(str(merged))),
    }
    runs = {}
    for label, how in arms.items():
        answerer = load_answerer(how["model_args"], options, adapter_path=how.get("adapter_path"))
        runs[label] = timed_run(answerer, questions, args.answer_batch_size, tmp / "answers", label)
    same = identical_outputs(runs["merged"], runs["4bit + adapter"])
    columns = [("answered by", "<15"), ("questions", ">9"), ("questions/s", ">11.3f"), ("generated tok/s", ">15,.1f")]
    print_table(columns, [[k, r["questions"], r["questions_per_s"], r["tokens_per_s"]] for k, r in runs.items()])
    print(
        f"identical greedy answers (raw_output), merged vs 4-bit + adapter: {same}/{len(questions)}; merged / 4-bit "
        f"questions/s {ratio(runs['merged'], runs['4bit + adapter'], 'questions_per_s'):.2f}x"
    )
    differing = [
        q["id"] for q in questions if runs["merged"]["outputs"][q["id"]] != runs["4bit + adapter"]["outputs"][q["id"]]
    ]
    for qid in differing[:3]:
        print(f"  {qid}: merged {runs['merged']['outputs'][qid]!r} / 4-bit {runs['4bit + adapter']['outputs'][qid]!r}")
    return {"identical_outputs": same, "questions": len(questions), "runs": without_outputs(runs)}


if __name__ == "__main__":
    sys.exit(main())

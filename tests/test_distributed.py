"""Training in several processes: real 2-process CPU runs (gloo) through accelerate launch and torchrun on the tiny
model, DDP and (through tests/launch_on_cpu.py) FSDP2 and DeepSpeed ZeRO-3, the embedded-model conversion under
concurrent processes, and the shipped accelerate configs with the settings train.py refuses."""

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from llama_squad import distributed, embedded, models, training
from llama_squad.config import ModelArguments, ScriptArguments, TrainConfig
from llama_squad.files import InputError, output_lock

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"
# No GPU for the processes, even on a machine with one: they train on the CPU over gloo, as --use_cpu defaults to on.
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ENV["CUDA_VISIBLE_DEVICES"] = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(*args) -> list[str]:
    """``accelerate launch`` with the shipped 2-process CPU config (the command the README gives)."""
    config = ACCELERATE_CONFIGS / "cpu_2proc.yaml"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    return [*launch, "--main_process_port", str(free_port()), str(REPO / "train.py"), *args]


def torchrun(*args) -> list[str]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    return [*launch, "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(REPO / "train.py"), *args]


def run(command: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )


def train_args(model_dir, data_dir, out, *extra) -> list[str]:
    """4 steps of 2 examples per process x 2 processes x 2 accumulation steps: 8 of the 12 examples per step."""
    return [
        "--model_name_or_path", str(model_dir), "--dataset_path", str(data_dir), "--output_dir", str(out),
        "--max_steps", "4", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--learning_rate", "5e-3", "--warmup_steps", "0", "--logging_steps", "1", "--save_steps", "2",
        "--eval_strategy", "no", "--max_length", "256", "--lora_r", "4", "--lora_alpha", "8", "--report_to", "none",
        "--seed", "0", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def log_lines(output: str, rank: int) -> list[str]:
    """The log lines of one process (``HH:MM:SS [rank N] LEVEL name: message``), as ``LEVEL name: message``."""
    tag = re.compile(rf"^\d\d:\d\d:\d\d \[rank {rank}\] ")
    return [tag.sub("", line) for line in output.splitlines() if tag.match(line)]


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-6000:]


# ---------------------------------------------------------------------------------------------- 2-process runs


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_model_dir, tiny_dataset_dir):
    """A finished 2-process run (accelerate launch, gloo) with --merge: (output folder, combined log)."""
    out = tmp_path_factory.mktemp("dist") / "out"
    result = run(accelerate_launch(*train_args(tiny_model_dir, tiny_dataset_dir, out, "--merge")))
    assert_ok(result)
    return out, result.stdout


def test_two_processes_train_one_model_together(two_process_run):
    out, log = two_process_run
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # each step consumed 2 per process x 2 processes x 2 accumulation = 8 of the 12 examples: epoch 2/3 after step 1
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
    assert state["log_history"][0]["epoch"] == pytest.approx(8 / 12, abs=1e-4)
    assert sorted(p.name for p in (out / "checkpoint-2").glob("rng_state_*.pth")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]
    config = yaml.safe_load((out / "run_config.yaml").read_text())
    assert (config["training"]["per_device_train_batch_size"], config["training"]["use_cpu"]) == (2, True)


def test_the_main_process_alone_logs_writes_and_merges(two_process_run):
    out, log = two_process_run
    main = log_lines(log, 0)
    batch = "effective batch size 8 (2 per device × 2 processes × 2 accumulation steps)"
    assert f"INFO llama_squad.training: {batch}" in main
    assert [line for line in main if "INFO train: wrote" in line] == [
        f"INFO train: wrote {out}/loss.png",
        f"INFO train: wrote {out}/merged (merged model)",
        f"INFO train: wrote {out} (adapter, tokenizer, run_config.yaml, loss.png)",
    ]
    assert log_lines(log, 1) == []  # the other process logs warnings only, and had none
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "checkpoint-2",
        "checkpoint-4", "loss.png", "merged", "run_config.yaml", "tokenizer.json", "tokenizer_config.json",
        "trainer_state.json", "training_args.bin",
    ]  # fmt: skip
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [
        ".llama_squad.lock"
    ]  # no leftover temporaries
    assert (out / "merged" / "model.safetensors").is_file()


def test_a_torn_checkpoint_is_skipped_by_every_process_of_a_resumed_run(
    two_process_run, tmp_path, tiny_model_dir, tiny_dataset_dir
):
    """torchrun this time; checkpoint-4 lost its trainer_state.json (the Trainer writes it last): both processes
    resume from checkpoint-2, the main one alone moves checkpoint-4 aside, and the run ends at the step asked."""
    out = tmp_path / "out"
    shutil.copytree(two_process_run[0], out)
    (out / "checkpoint-4" / "trainer_state.json").unlink()
    extra = ("--max_steps", "6", "--log_level_replica", "info")  # rank 1 logs its info lines too, for the check
    result = run(torchrun(*train_args(tiny_model_dir, tiny_dataset_dir, out, *extra)))
    assert_ok(result)
    for rank in (0, 1):
        assert f"INFO llama_squad.resume: resuming from {out}/checkpoint-2" in log_lines(result.stdout, rank)
    assert [line for line in log_lines(result.stdout, 0) if "moved it to" in line] == [
        f"WARNING llama_squad.checkpoints: moved it to {out}/incomplete-checkpoint-4 (delete it once you no "
        "longer need it)"
    ]
    assert not [line for line in log_lines(result.stdout, 1) if "checkpoint-4" in line]
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
        "incomplete-checkpoint-4",
    ]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert [e["step"] for e in state["log_history"] if "loss" in e][-4:] == [3, 4, 5, 6]


def test_every_process_stops_with_the_message_when_another_run_holds_the_folder(
    tmp_path, tiny_model_dir, tiny_dataset_dir
):
    out = tmp_path / "busy"
    with output_lock(out):
        result = run(accelerate_launch(*train_args(tiny_model_dir, tiny_dataset_dir, out)), timeout=120)
    assert result.returncode != 0
    message = (
        f"ERROR train: --output_dir {out}: another run is writing to this folder right now (it holds "
        f"{out}/.llama_squad.lock); wait for it to finish, or pass another --output_dir"
    )
    assert message in log_lines(result.stdout, 0) and message in log_lines(result.stdout, 1)
    # neither process crashed (on a barrier the main one never reached): torchrun tags their tracebacks [rankN]:
    assert not re.search(r"^\[rank\d\]: \w+Error", result.stdout, re.MULTILINE), result.stdout[-3000:]


# ------------------------------------------------------------------------------- FSDP2 and ZeRO-3 on the CPU

LAUNCH_ON_CPU = REPO / "tests" / "launch_on_cpu.py"
ENGINE_CONFIGS = {"fsdp2": "fsdp", "zero3": "deepspeed_zero3"}


def sharded_launch(config_name: str, *args) -> list[str]:
    """``accelerate launch`` with a shipped GPU config (FSDP2 or ZeRO-3), as a user runs it, on 2 CPU processes in
    float32, each of them tests/launch_on_cpu.py: train.py's main() after what the CPU needs (gloo, accelerate's
    FSDP state) is set up."""
    config = ACCELERATE_CONFIGS / f"{config_name}.yaml"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    options = ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port())]
    return [*launch, *options, str(LAUNCH_ON_CPU), *args]


def run_sharded(command: list[str], kill_at_step: int | None = None) -> subprocess.CompletedProcess:
    from launch_on_cpu import KILL_AT_STEP

    env = {**ENV, "DS_ACCELERATOR": "cpu"}  # DeepSpeed's CPU accelerator
    if kill_at_step is not None:
        env[KILL_AT_STEP] = str(kill_at_step)
    return subprocess.run(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )


def sharded_args(model_dir, data_dir, out, *extra) -> list[str]:
    """train_args without LoRA dropout (each process draws its own masks) and at a learning rate whose Adam steps
    keep float32 rounding below 1e-5."""
    return train_args(model_dir, data_dir, out, "--lora_dropout", "0", "--learning_rate", "2e-3", *extra)


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def logged_losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]


def reloaded_logits(model_dir: Path, adapter: Path | None, load_in_4bit: bool = False) -> torch.Tensor:
    """The logits of a fixed prompt (ending in the tokens training added last: the pause tokens, if any) from the base
    model with ``adapter`` loaded as test.py loads it."""
    from llama_squad.config import ModelLoadingArguments

    options = ModelLoadingArguments(str(model_dir), load_in_4bit=load_in_4bit)
    model, tokenizer = models.load_for_inference(options, adapter_path=adapter, merge_adapter=False)
    text = "When was Alder1 founded? " + "".join(tokenizer.convert_ids_to_tokens(range(len(tokenizer))[-2:]))
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits.float()


@pytest.fixture(scope="module")
def untied_tiny_model_dir(tmp_path_factory, smollm2_tokenizer_dir) -> Path:
    """tiny_model_dir's shape with an output layer of its own: the pause tokens' rows can be sharded (a tied one is
    refused under FSDP and ZeRO-3)."""
    from transformers import AutoTokenizer

    from llama_squad.testing import random_llama

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    model = random_llama(
        tokenizer, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.3,
    )  # fmt: skip
    model.config.tie_word_embeddings = False
    generator = torch.Generator().manual_seed(1)
    head = torch.randn(model.lm_head.weight.shape, generator=generator) * 0.3
    model.lm_head.weight = torch.nn.Parameter(head)
    folder = tmp_path_factory.mktemp("untied_tiny_llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one_process_pause_run(tmp_path_factory, untied_tiny_model_dir, tiny_dataset_dir) -> Path:
    """The reference: the same 4 steps in 1 process, each of 2 per device x 4 accumulation steps (8 examples, the
    micro-batches 2 processes x 2 accumulation steps share out), with 2 pause tokens."""
    import train

    out = tmp_path_factory.mktemp("one_process") / "out"
    argv = sharded_args(untied_tiny_model_dir, tiny_dataset_dir, out, "--pause_tokens", "2")
    assert train.main([*argv, "--gradient_accumulation_steps", "4"]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_a_sharded_run_killed_after_a_checkpoint_resumes_and_saves_what_one_process_trains(
    engine, tmp_path, untied_tiny_model_dir, tiny_dataset_dir, one_process_pause_run
):
    """FSDP2 or DeepSpeed ZeRO-3 from the shipped config, 2 processes, LoRA and 2 learned pause tokens: killed
    (SIGKILL) once checkpoint-2 is written, the same command resumes from it and finishes. The final adapter and
    every checkpoint's hold each LoRA tensor and the pause rows whole, equal to the 1-process run's to 1e-5, and the
    reloaded adapter gives its logits (to 2e-4)."""
    if engine == "zero3" and importlib.util.find_spec("deepspeed") is None:
        pytest.fail('DeepSpeed is not installed: pip install -e ".[deepspeed]" (make test installs it)')
    out = tmp_path / "out"
    command = sharded_launch(
        ENGINE_CONFIGS[engine], *sharded_args(untied_tiny_model_dir, tiny_dataset_dir, out, "--pause_tokens", "2")
    )
    killed = run_sharded(command, kill_at_step=2)
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stdout, killed.stdout[-6000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (out / "adapter_model.safetensors").exists()
    engine_files = {"fsdp2": "pytorch_model_fsdp.bin", "zero3": "global_step2"}  # the engine's own state: not DDP
    assert (out / "checkpoint-2" / engine_files[engine]).exists()

    resumed = run_sharded(command)
    assert_ok(resumed)
    assert f"INFO llama_squad.resume: resuming from {out}/checkpoint-2" in log_lines(resumed.stdout, 0)
    state = json.loads((out / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
    reference = one_process_pause_run
    for folder in ("checkpoint-2", "checkpoint-4", "."):
        saved = adapter_tensors(out / folder)
        assert sum("lora_" in k for k in saved) == 28 and sum("trainable_tokens" in k for k in saved) == 1
        assert max_difference(saved, adapter_tensors(reference / folder)) < 1e-5, folder
        assert all(v.abs().min() > 0 for k, v in saved.items() if "lora_B" in k)  # trained, not left at zero
        assert len(json.loads((out / folder / "pause_tokens.json").read_text())["tokens"]) == 2

    # logits up to ±12, whose float32 rounding the random model amplifies: measured 7e-5 apart
    logits = reloaded_logits(untied_tiny_model_dir, out)
    torch.testing.assert_close(logits, reloaded_logits(untied_tiny_model_dir, reference), atol=2e-4, rtol=0)


@pytest.mark.slow
def test_fsdp2_qlora_stores_the_4bit_weights_in_the_compute_dtype_and_saves_the_whole_adapter(
    tmp_path, tiny_model_dir, tiny_dataset_dir
):
    """FSDP2 + QLoRA (NF4, the 4-bit weights stored in float32: bnb_4bit_quant_storage) on 2 processes, on the tied
    tiny model: the adapter is whole and reloads onto the 4-bit model. TRL trains a quantized model's adapter in
    bfloat16, so the 1-process run is matched to what bfloat16 allows, not to 1e-5: measured, FSDP2 and a 1-process
    run with 4 examples per device x 2 accumulation steps differ from it alike (adapter 2e-3 apart, each lora_B
    within 6.5% of its norm, the change the adapter makes to the logits within 24%); an adapter missing half of
    each tensor would be ~70% off."""
    import train

    out, reference = tmp_path / "out", tmp_path / "one_process"
    argv = sharded_args(tiny_model_dir, tiny_dataset_dir, out, "--load_in_4bit", "--max_steps", "2")
    result = run_sharded(sharded_launch("fsdp", *argv))
    assert_ok(result)
    assert (out / "checkpoint-2" / "pytorch_model_fsdp.bin").exists()
    reference_argv = sharded_args(tiny_model_dir, tiny_dataset_dir, reference, "--load_in_4bit", "--max_steps", "2")
    assert train.main([*reference_argv, "--gradient_accumulation_steps", "4"]) == 0
    assert logged_losses(out) == pytest.approx(logged_losses(reference), rel=1e-5)
    saved, expected = adapter_tensors(out), adapter_tensors(reference)
    assert len(saved) == 28 and {v.dtype for v in saved.values()} == {torch.bfloat16}
    assert max_difference(saved, expected) < 0.01
    for name in (k for k in saved if "lora_B" in k):  # trained from zero: each whole, not a slice
        assert (saved[name].float() - expected[name].float()).norm() < 0.15 * expected[name].float().norm(), name
    logits, expected_logits, base = (
        reloaded_logits(tiny_model_dir, folder, load_in_4bit=True) for folder in (out, reference, None)
    )
    assert (logits - expected_logits).norm() < 0.5 * (expected_logits - base).norm()


# --------------------------------------------------------------------------------- embedded model conversion

CONVERT_SCRIPT = textwrap.dedent(
    """
    import json, logging, os, sys, time
    from pathlib import Path
    from llama_squad import embedded, models
    from llama_squad.files import atomic_path

    gguf, cache, calls, ready = (Path(a) for a in sys.argv[1:5])
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def convert(source, output_dir):  # stands in for the real ~20 s conversion
        with open(calls, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1.0)
        with atomic_path(output_dir, is_dir=True) as tmp:
            (tmp / embedded.CONVERTED_MARKER).write_text(json.dumps({"source": embedded.gguf_source(source)}))
        return output_dir

    embedded.embedded_gguf_path = lambda: gguf
    embedded.convert_embedded = convert
    (ready / str(os.getpid())).touch()
    while len(list(ready.iterdir())) < 2:  # start resolving together
        time.sleep(0.01)
    print(models.resolve_model_path("embedded", cache_dir=cache))
    """
)


def test_two_processes_asking_for_the_embedded_model_at_once_convert_it_once(tmp_path):
    gguf = tmp_path / "pkg" / embedded.EMBEDDED_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(60))
    cache, calls, ready = tmp_path / "cache", tmp_path / "calls.txt", tmp_path / "ready"
    ready.mkdir()
    argv = [sys.executable, "-c", CONVERT_SCRIPT, str(gguf), str(cache), str(calls), str(ready)]
    processes = [subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    folder = str(cache / embedded.EMBEDDED_FOLDER)
    assert [out.strip() for out, _ in outputs] == [folder, folder]
    assert len(calls.read_text().splitlines()) == 1  # one conversion; without the lock both would convert
    waited = [err for _, err in outputs if f"using {folder} (converted by another process meanwhile)" in err]
    assert len(waited) == 1
    marker = json.loads((cache / embedded.EMBEDDED_FOLDER / embedded.CONVERTED_MARKER).read_text())
    assert marker["source"]["file"] == embedded.EMBEDDED_GGUF


def test_a_conversion_that_waits_too_long_names_the_lock_and_the_way_out(tmp_path):
    from filelock import FileLock

    folder = tmp_path / embedded.EMBEDDED_FOLDER
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock\n"
         "with FileLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", f"{folder}.lock"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(models.ModelError) as error, embedded.conversion_lock(folder, timeout=0.2):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert str(error.value) == (
        f"--model_name_or_path embedded: another process has been converting the embedded model into {folder} for "
        f"over 0 s (it holds {folder}.lock); wait for it to finish, or pass --model_cache_dir with another folder"
    )
    with FileLock(f"{folder}.lock", timeout=0):  # released when its holder died
        pass


# ------------------------------------------------------------------------------------------ engines and options


def test_effective_batch_size_is_per_device_times_processes_times_accumulation(tmp_path):
    config = TrainConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2)
    assert distributed.effective_batch_size(config) == 8
    assert distributed.describe_batch(config) == (
        "effective batch size 8 (4 per device × 1 process × 2 accumulation steps)"
    )


def test_run_on_main_in_a_single_process_calls_through(tmp_path):
    def refuse():
        raise InputError("--output_dir: busy")

    config = TrainConfig(output_dir=str(tmp_path))
    assert distributed.run_on_main(config, lambda: "checkpoint-2") == "checkpoint-2"
    with pytest.raises(InputError, match="^--output_dir: busy$"):
        distributed.run_on_main(config, refuse)


def test_without_an_accelerator_training_defaults_to_the_cpu(tmp_path, monkeypatch):
    from llama_squad import config as config_module

    monkeypatch.setattr(config_module, "_accelerator_available", lambda: False)
    assert TrainConfig(output_dir=str(tmp_path)).use_cpu is True
    monkeypatch.setattr(config_module, "_accelerator_available", lambda: True)
    assert TrainConfig(output_dir=str(tmp_path)).use_cpu is False
    assert TrainConfig(output_dir=str(tmp_path), use_cpu=True).use_cpu is True


def test_fsdp_is_seen_from_the_accelerate_launcher_or_the_option(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    config = TrainConfig(output_dir=str(tmp_path))
    assert not distributed.fsdp_enabled(config)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch --config_file fsdp.yaml sets
    assert distributed.fsdp_enabled(config) and distributed.shards_parameters(config)


def set_fsdp2_environment(monkeypatch) -> None:
    """What accelerate launch --config_file configs/accelerate/fsdp.yaml sets, in short."""
    for key, value in {
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_VERSION": "2",
        "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
    }.items():
        monkeypatch.setenv(key, value)


def test_fsdp_refuses_8bit_optimizers(tmp_path, monkeypatch, tiny_model_dir, tiny_dataset_dir):
    model_args, script_args = ModelArguments(str(tiny_model_dir)), ScriptArguments(str(tiny_dataset_dir))
    set_fsdp2_environment(monkeypatch)
    config = TrainConfig(output_dir=str(tmp_path), optim="paged_adamw_8bit", use_cpu=False)
    with pytest.raises(InputError) as error:
        training.validate(model_args, script_args, config)
    assert str(error.value) == (
        "invalid options:\n  - --optim paged_adamw_8bit with FSDP: bitsandbytes' 8-bit optimizers fail when FSDP "
        "saves a checkpoint; pass --optim adamw_torch (FSDP shards the optimizer state already)"
    )
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    training.validate(model_args, script_args, config)  # DDP: fine


@pytest.mark.parametrize(
    "variable, engine", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")]
)
def test_a_sharding_engine_on_the_cpu_is_refused_rather_than_run_as_ddp(
    tmp_path, monkeypatch, tiny_model_dir, tiny_dataset_dir, variable, engine
):
    """accelerate turns CPU processes into DistributedType.MULTI_CPU and drops the FSDP / DeepSpeed plugin: the run
    would silently be DDP (seen with accelerate launch --config_file <FSDP config with use_cpu: true>)."""
    model_args, script_args = ModelArguments(str(tiny_model_dir)), ScriptArguments(str(tiny_dataset_dir))
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    on_cpu, on_gpus = (TrainConfig(output_dir=str(tmp_path), use_cpu=use_cpu) for use_cpu in (True, False))
    training.validate(model_args, script_args, on_cpu)  # DDP on the CPU: fine
    # what accelerate launch --config_file fsdp.yaml / deepspeed_zero3.yaml sets (set after the TrainConfig is built:
    # TrainingArguments wants DeepSpeed installed once the variable is there)
    monkeypatch.setenv(variable, "true")
    if engine == "FSDP":
        set_fsdp2_environment(monkeypatch)
    with pytest.raises(InputError) as error:
        training.validate(model_args, script_args, on_cpu)
    assert str(error.value) == (
        f"invalid options:\n  - --use_cpu with {engine} (the default without a GPU): accelerate shards nothing on "
        "the CPU and would train plain DDP instead; run on GPUs (--use_cpu false), or use "
        "configs/accelerate/cpu_2proc.yaml (DDP) on the CPU"
    )
    training.validate(model_args, script_args, on_gpus)  # GPUs: fine


def test_sharded_4bit_weights_are_stored_in_the_compute_dtype(tiny_model_dir):
    """FSDP / ZeRO-3 QLoRA: bnb_4bit_quant_storage is the compute dtype, and the model stays where it loaded."""
    pytest.importorskip("bitsandbytes")
    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    options = ModelArguments(dtype="bfloat16", load_in_4bit=True)
    sharded = models.load_model(tiny_model_dir, options, sharded=True)
    plain = models.load_model(tiny_model_dir, options)
    up_sharded, up_plain = sharded.model.layers[0].mlp.up_proj.weight, plain.model.layers[0].mlp.up_proj.weight
    assert (sharded.hf_quantizer.quantization_config.bnb_4bit_quant_storage, up_sharded.dtype) == (torch.bfloat16,) * 2
    assert (plain.hf_quantizer.quantization_config.bnb_4bit_quant_storage, up_plain.dtype) == (torch.uint8,) * 2
    # 128 x 64 4-bit weights: 4096 bytes, as 4096 uint8 or 2048 bfloat16
    assert (up_plain.numel(), up_sharded.numel()) == (4096, 2048)


def launcher_environment(name: str) -> dict:
    """What ``accelerate launch --config_file configs/accelerate/<name>.yaml`` would hand to each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(ACCELERATE_CONFIGS / f"{name}.yaml"), "train.py"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before its DeepSpeed launcher
        fields = [*defaults.deepspeed_config, *(["mixed_precision"] if mixed_precision_from_config else [])]
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return {"processes": args.num_processes, **prepare_deepspeed_cmd_env(args)[1]}
    return {"processes": args.num_processes, "multi_gpu": args.multi_gpu, **prepare_multi_gpu_env(args)}


def test_the_shipped_accelerate_configs_give_the_launcher_what_train_py_expects():
    assert sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")) == [
        "cpu_2proc",
        "ddp",
        "deepspeed_zero3",
        "fsdp",
    ]
    cpu = launcher_environment("cpu_2proc")
    assert (cpu["processes"], cpu["multi_gpu"], cpu["ACCELERATE_MIXED_PRECISION"]) == (2, True, "no")
    ddp = launcher_environment("ddp")
    assert (ddp["processes"], ddp["multi_gpu"], ddp["ACCELERATE_MIXED_PRECISION"]) == (8, True, "bf16")
    assert "ACCELERATE_USE_FSDP" not in ddp
    fsdp = launcher_environment("fsdp")
    wanted = {
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_VERSION": "2",  # FSDP1 saves an empty adapter
        "FSDP_RESHARD_AFTER_FORWARD": "true",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
        "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",  # SHARDED_STATE_DICT: checkpoints without the adapter
        "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
        "FSDP_SYNC_MODULE_STATES": "true",  # which the launcher wants with cpu_ram_efficient_loading
        "FSDP_OFFLOAD_PARAMS": "false",
        "ACCELERATE_MIXED_PRECISION": "bf16",
    }
    assert {k: fsdp.get(k) for k in wanted} == wanted
    zero3 = launcher_environment("deepspeed_zero3")
    wanted = {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
        "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true",
        "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true",
        "ACCELERATE_MIXED_PRECISION": "bf16",
    }
    assert {k: zero3.get(k) for k in wanted} == wanted
    # train.py's --gradient_accumulation_steps rules: a value in the DeepSpeed config would contradict recipes
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in zero3


def test_the_shipped_fsdp_and_zero3_configs_pass_train_py_checks_on_gpus(
    tmp_path, monkeypatch, tiny_model_dir, tiny_dataset_dir
):
    model_args, script_args = ModelArguments(str(tiny_model_dir)), ScriptArguments(str(tiny_dataset_dir))
    config = TrainConfig(output_dir=str(tmp_path), use_cpu=False, optim="adamw_torch")
    for name in ("fsdp", "deepspeed_zero3"):
        with monkeypatch.context() as patched:
            for key, value in launcher_environment(name).items():
                if key.startswith(("ACCELERATE_", "FSDP_")):
                    patched.setenv(key, value)
            training.validate(model_args, script_args, config)


FSDP1_WITH_AN_ADAPTER = (
    "FSDP version 1 with an adapter (--use_peft): PEFT cannot name the LoRA weights of nested FSDP1 units and would "
    "save an adapter with no tensor; use FSDP2: fsdp_version: 2 in the accelerate config (as in "
    'configs/accelerate/fsdp.yaml), accelerate launch --fsdp_version 2, or "version": 2 in --fsdp_config'
)
SHARDED_STATE_DICT = (
    "FSDP with fsdp_state_dict_type SHARDED_STATE_DICT: the checkpoints would hold FSDP's own shards and no adapter "
    "or model weights to evaluate or to finish from; use FULL_STATE_DICT: fsdp_state_dict_type: FULL_STATE_DICT in "
    "the accelerate config (as in configs/accelerate/fsdp.yaml), accelerate launch --fsdp_state_dict_type "
    'FULL_STATE_DICT, or "state_dict_type": "FULL_STATE_DICT" in --fsdp_config'
)


@pytest.mark.parametrize(
    "environment, fsdp_config, use_peft, refused",
    [
        # the fsdp.yaml shipped before: FSDP1 (an adapter with no tensor), SHARDED_STATE_DICT (no adapter in any
        # checkpoint)
        ({"FSDP_VERSION": "1", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT"}, None, True,
         [FSDP1_WITH_AN_ADAPTER, SHARDED_STATE_DICT]),
        ({"FSDP_VERSION": "1", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}, None, True, [FSDP1_WITH_AN_ADAPTER]),
        ({"FSDP_VERSION": "1", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}, None, False, []),  # whole model: saved
        ({"FSDP_VERSION": "2"}, None, True, [SHARDED_STATE_DICT]),  # accelerate's default for FSDP2
        ({}, {"version": 1, "state_dict_type": "SHARDED_STATE_DICT"}, True,  # train.py --fsdp --fsdp_config
         [FSDP1_WITH_AN_ADAPTER, SHARDED_STATE_DICT]),
        ({}, {}, True, []),  # transformers' defaults: FSDP2, FULL_STATE_DICT
    ],
    ids=["fsdp1-sharded", "fsdp1", "fsdp1-full-model", "fsdp2-default", "fsdp_config", "fsdp_config-default"],
)  # fmt: skip
def test_fsdp_settings_that_lose_the_adapter_are_refused_before_training(
    tmp_path, monkeypatch, tiny_model_dir, tiny_dataset_dir, environment, fsdp_config, use_peft, refused
):
    """Found with 2 processes: FSDP1 trains but saves an adapter with 0 tensors (PEFT strips only a leading
    ``_fsdp_wrapped_module.`` from the names); with SHARDED_STATE_DICT the Trainer's save_model writes nothing, so
    no checkpoint holds the adapter (nor could a finished run's final save be taken from one)."""
    model_args = ModelArguments(str(tiny_model_dir), use_peft=use_peft)
    script_args = ScriptArguments(str(tiny_dataset_dir))
    for key in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_STATE_DICT_TYPE"):
        monkeypatch.delenv(key, raising=False)
    fsdp = {"fsdp": "full_shard auto_wrap", "fsdp_config": fsdp_config} if fsdp_config is not None else {}
    config = TrainConfig(output_dir=str(tmp_path), use_cpu=False, **fsdp)
    if environment:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    if not refused:
        training.validate(model_args, script_args, config)
        return
    with pytest.raises(InputError) as error:
        training.validate(model_args, script_args, config)
    assert str(error.value) == "invalid options:\n  - " + "\n  - ".join(refused)


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_pause_tokens_on_a_tied_output_layer_are_refused_under_fsdp_and_zero3(
    tmp_path, monkeypatch, tiny_model_dir, untied_tiny_model_dir, variable
):
    """Tied input and output rows of the pause tokens: FSDP2 fails in accelerate before the first step (the two
    PEFT wrappers of the shared rows land in different FSDP groups), ZeRO-3 at the first step (TRL's fused LM head
    gathers a tensor, not a parameter): refused once the model is loaded, naming the ways out. An untied model
    trains (the slow test above)."""
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    config = TrainConfig(output_dir=str(tmp_path), use_cpu=False)
    if variable == "ACCELERATE_USE_FSDP":
        monkeypatch.setenv(variable, "true")
    else:  # what transformers says once the TrainingArguments have read a ZeRO-3 config
        monkeypatch.setattr(distributed, "deepspeed_zero3_enabled", lambda: True)
    with pytest.raises(InputError) as error:
        training.load_for_training(ModelArguments(str(tiny_model_dir), pause_tokens=2), config)
    assert str(error.value) == (
        f"--pause_tokens 2 with FSDP or DeepSpeed ZeRO-3: {tiny_model_dir} ties its output layer to its input "
        "embedding (tie_word_embeddings), and the pause rows PEFT trains in both cannot be sharded (accelerate 1.16 "
        "puts the two in different FSDP groups and fails; under ZeRO-3 TRL 1.16's fused LM head cannot gather "
        "them); train with DDP (configs/accelerate/ddp.yaml) or on one GPU, or drop --pause_tokens"
    )
    if variable == "ACCELERATE_USE_FSDP":  # an untied model loads (and would shard: the slow test above)
        loaded = training.load_for_training(ModelArguments(str(untied_tiny_model_dir), pause_tokens=2), config)
        assert loaded.pause_ids == [49152, 49153]

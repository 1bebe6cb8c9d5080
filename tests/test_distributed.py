"""Training in several processes: real 2-process CPU runs (gloo) through accelerate launch and torchrun on the tiny
model, the embedded-model conversion under concurrent processes, and the shipped accelerate configs."""

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


def test_fsdp_refuses_8bit_optimizers(tmp_path, monkeypatch, tiny_model_dir, tiny_dataset_dir):
    model_args, script_args = ModelArguments(str(tiny_model_dir)), ScriptArguments(str(tiny_dataset_dir))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
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
        "FSDP_VERSION": "1",
        "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
        "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
        "FSDP_USE_ORIG_PARAMS": "false",  # PEFT: LoRA and frozen weights wrapped apart
        "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
        "FSDP_SYNC_MODULE_STATES": "true",
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

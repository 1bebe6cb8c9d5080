"""What real users do to a long run: kill it mid-checkpoint, re-run it with other flags, start it twice, feed it a
broken file. Each case must end in a resumed run or one clear message, never a traceback or mixed results."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import summarize_results
import test as test_script
import train
from llama_squad import resume
from llama_squad.checkpoints import checkpoint_problem, latest_complete_checkpoint
from llama_squad.files import InputError, output_lock
from llama_squad.results import (
    RESULT_COLUMNS,
    ResultsWriter,
    answered_ids,
    merge_shards,
    read_results,
    result_columns,
    shard_path,
)
from llama_squad.tasks import squad_v2

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def train_argv(model_dir, data_dir, out, *extra):
    return [
        "--model_name_or_path", str(model_dir), "--dataset_path", str(data_dir), "--output_dir", str(out),
        "--max_steps", "4", "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--warmup_steps", "0",
        "--logging_steps", "1", "--save_steps", "2", "--eval_strategy", "no", "--max_length", "256", "--lora_r", "4",
        "--lora_alpha", "8", "--report_to", "none", "--seed", "0", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def eval_argv(model_dir, data_dir, out, *extra):
    return ["--model_name_or_path", str(model_dir), "--dataset_path", str(data_dir), "--output_dir", str(out),
            "--max_new_tokens", "6", *extra]  # fmt: skip


def wait_for(condition, process, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"the process ended (exit {process.returncode}) before the condition held")
        time.sleep(0.05)
    raise AssertionError("timed out")


# ------------------------------------------------------------------------------------------- torn checkpoints


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, tiny_model_dir, tiny_dataset_dir):
    """A finished 4-step run with checkpoint-2 and checkpoint-4."""
    out = tmp_path_factory.mktemp("ckpt") / "out"
    assert train.main(train_argv(tiny_model_dir, tiny_dataset_dir, out)) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    return out


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


TEARS = {
    "no trainer_state.json": lambda c: (c / "trainer_state.json").unlink(),
    "trainer_state.json cut short": lambda c: truncate(c / "trainer_state.json"),
    "adapter weights cut short": lambda c: truncate(c / "adapter_model.safetensors"),
    "adapter weights missing": lambda c: (c / "adapter_model.safetensors").unlink(),
    "optimizer cut short": lambda c: truncate(c / "optimizer.pt", 0.9),
    "scheduler missing": lambda c: (c / "scheduler.pt").unlink(),
    "trainer_state.json of the wrong shape": lambda c: (c / "trainer_state.json").write_text(
        json.dumps({**json.loads((c / "trainer_state.json").read_text()), "log_history": "garbage"})
    ),
}
REASONS = {
    "no trainer_state.json": "no trainer_state.json",
    "trainer_state.json cut short": "trainer_state.json is cut short",
    "adapter weights cut short": "adapter_model.safetensors is cut short",
    "adapter weights missing": "no model weights",
    "optimizer cut short": "optimizer.pt is cut short",
    "scheduler missing": "no scheduler state",
    "trainer_state.json of the wrong shape": "trainer_state.json is corrupt (log_history is not a list of entries)",
}


def test_complete_checkpoints_pass(two_checkpoints):
    for name in ("checkpoint-2", "checkpoint-4"):
        assert checkpoint_problem(two_checkpoints / name) is None


@pytest.mark.parametrize("tear", list(TEARS))
def test_a_torn_checkpoint_is_skipped_logged_and_moved_aside(two_checkpoints, tmp_path, caplog, tear):
    out = tmp_path / "out"
    shutil.copytree(two_checkpoints, out)
    TEARS[tear](out / "checkpoint-4")
    assert checkpoint_problem(out / "checkpoint-4").startswith(REASONS[tear])
    caplog.set_level(logging.WARNING)
    assert latest_complete_checkpoint(out) == out / "checkpoint-2"
    assert f"skipping {out / 'checkpoint-4'}: incomplete ({REASONS[tear]}" in caplog.text
    assert not (out / "checkpoint-4").exists() and (out / "incomplete-checkpoint-4").is_dir()


def test_every_checkpoint_torn_starts_afresh(two_checkpoints, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(two_checkpoints, out)
    for name in ("checkpoint-2", "checkpoint-4"):
        (out / name / "trainer_state.json").unlink()
    assert latest_complete_checkpoint(out) is None
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == [
        "incomplete-checkpoint-2",
        "incomplete-checkpoint-4",
    ]


def test_a_named_torn_checkpoint_is_refused_with_the_reason(two_checkpoints, tmp_path):
    from llama_squad.config import TrainConfig

    out = tmp_path / "out"
    shutil.copytree(two_checkpoints, out)
    truncate(out / "checkpoint-2" / "adapter_model.safetensors")
    config = TrainConfig(output_dir=str(out), resume_from_checkpoint=str(out / "checkpoint-2"))
    with pytest.raises(InputError, match="cannot resume from it .adapter_model.safetensors is cut short"):
        resume.find_checkpoint(config)


def test_killed_while_writing_a_checkpoint_the_rerun_resumes_from_the_last_whole_one(
    tmp_path, caplog, tiny_model_dir, tiny_dataset_dir
):
    """A real SIGKILL in the middle of checkpoint-4 (model and optimizer written, trainer_state.json not yet)."""
    out = tmp_path / "out"
    argv = train_argv(tiny_model_dir, tiny_dataset_dir, out, "--max_steps", "6")
    driver = textwrap.dedent(f"""
        import os, signal, sys
        from transformers import Trainer
        save_rng_state = Trainer._save_rng_state
        def die_in_checkpoint_4(self, output_dir):
            if self.state.global_step == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return save_rng_state(self, output_dir)
        Trainer._save_rng_state = die_in_checkpoint_4
        import train
        sys.exit(train.main({argv!r}))
    """)
    result = subprocess.run([sys.executable, "-c", driver], cwd=REPO, env=ENV, capture_output=True, timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert (out / "checkpoint-4" / "adapter_model.safetensors").exists()
    assert not (out / "checkpoint-4" / "trainer_state.json").exists()

    caplog.set_level(logging.INFO)
    assert train.main(argv) == 0  # and again: it does not fail on every re-run
    assert "skipping" in caplog.text and "checkpoint-4: incomplete (no trainer_state.json" in caplog.text
    assert f"resuming from {out / 'checkpoint-2'}" in caplog.text
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert checkpoint_problem(out / "checkpoint-4") is None and (out / "incomplete-checkpoint-4").is_dir()


def test_resuming_with_another_adapter_shape_is_refused(two_checkpoints, tmp_path, caplog, tiny_model_dir):
    import yaml

    out = tmp_path / "out"
    shutil.copytree(two_checkpoints, out)
    dataset_path = yaml.safe_load((out / "run_config.yaml").read_text())["script"]["dataset_path"]
    assert train.main(train_argv(tiny_model_dir, dataset_path, out, "--max_steps", "6", "--lora_r", "8")) == 1
    assert "checkpoint-4 was trained with other model options (--lora_r 4 then, 8 now)" in caplog.text
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert (
        train.main(train_argv(tiny_model_dir, dataset_path, out, "--max_steps", "6", "--learning_rate", "1e-3")) == 0
    )
    assert "resuming with --learning_rate 0.001 (the checkpoint's run had 0.005)" in caplog.text


# ------------------------------------------------------------------------------------------- one run per folder


def test_a_folder_lock_refuses_a_second_holder(tmp_path):
    with output_lock(tmp_path / "out"):
        with pytest.raises(InputError, match="another run is writing to this folder"):
            with output_lock(tmp_path / "out"):
                pass
    with output_lock(tmp_path / "out"):  # released on exit
        pass


def test_two_evaluations_on_one_folder_the_second_refuses(tmp_path, caplog, tiny_model_dir, tiny_dataset_dir):
    out = tmp_path / "eval"
    argv = eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--batch_size", "1", "--max_new_tokens", "40")
    first = subprocess.Popen([sys.executable, str(REPO / "test.py"), *argv], cwd=REPO, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: (out / "results.csv").exists() and "squad_v2" in (out / "results.csv").read_text(), first)
        assert test_script.main(argv) == 1
        assert "another run is writing to this folder" in caplog.text
        assert first.poll() is None, "the first run must go on"
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
    results = read_results(out / "results.csv")
    assert len(results) == 8 and results["id"].is_unique


def test_two_trainings_on_one_folder_the_second_refuses(tmp_path, caplog, tiny_model_dir, tiny_dataset_dir):
    out = tmp_path / "out"
    argv = train_argv(tiny_model_dir, tiny_dataset_dir, out, "--max_steps", "400", "--save_steps", "1000")
    first = subprocess.Popen([sys.executable, str(REPO / "train.py"), *argv], cwd=REPO, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: (out / "run_config.yaml").exists(), first)
        assert train.main(argv) == 1
        assert "another run is writing to this folder" in caplog.text
        assert first.poll() is None, "the first run must go on"
    finally:
        first.kill()
        first.wait()


# ------------------------------------------------------------------------------------------- one evaluation run


def make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def metrics_of(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_a_rerun_with_other_settings_refuses_and_names_them(tmp_path, caplog, tiny_model_dir, tiny_dataset_dir):
    out = tmp_path / "eval"
    assert test_script.main(eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--limit", "4")) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["examples"] == 4 and record["settings"]["generation"]["max_new_tokens"] == 6
    before = (out / "results.csv").read_bytes()

    assert (
        test_script.main(eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--limit", "4", "--max_new_tokens", "9"))
        == 1
    )
    assert "generation.max_new_tokens: 6 in run.json, 9 now" in caplog.text
    assert test_script.main(eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--limit", "4", "--force_answer")) == 1
    assert "generation.force_answer: False in run.json, True now" in caplog.text
    assert (
        test_script.main(eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--limit", "4", "--split", "validation"))
        == 1
    )
    assert "dataset.split: 'test' in run.json, 'validation' now" in caplog.text
    assert test_script.main(eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--limit", "2")) == 1
    assert "is for 4 questions (--limit 4), this run asks 2" in caplog.text
    assert (out / "results.csv").read_bytes() == before and metrics_of(out)["total"] == 4

    # a larger --limit extends the same run; the batch size is free
    assert test_script.main(eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--limit", "6", "--batch_size", "5")) == 0
    results = read_results(out / "results.csv")
    assert len(results) == 6 and results["id"].is_unique and metrics_of(out)["total"] == 6
    assert (out / "results.csv").read_bytes().startswith(before)

    # --overwrite starts a new file with the new settings
    argv = eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--limit", "2", "--max_new_tokens", "9", "--overwrite")
    assert test_script.main(argv) == 0
    assert len(read_results(out / "results.csv")) == 2 and metrics_of(out)["total"] == 2
    assert json.loads((out / "run.json").read_text())["settings"]["generation"]["max_new_tokens"] == 9


def test_a_retrained_adapter_is_another_run(tmp_path, caplog, tiny_model_dir, tiny_dataset_dir):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    out = tmp_path / "eval"
    argv = eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--limit", "2", "--adapter_path", str(adapter))
    assert test_script.main(argv) == 0
    moved = tmp_path / "moved_adapter"
    shutil.copytree(adapter, moved)  # copied elsewhere: the same adapter
    assert test_script.main([*argv[:-1], str(moved)]) == 0
    make_adapter(tiny_model_dir, adapter, seed=2)  # retrained in place
    assert test_script.main(argv) == 1
    assert "adapter: '" in caplog.text and "in run.json" in caplog.text


def test_results_without_a_run_record_are_not_added_to(tmp_path, caplog, tiny_model_dir, tiny_dataset_dir):
    out = tmp_path / "eval"
    assert test_script.main(eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--limit", "2")) == 0
    (out / "run.json").unlink()
    assert test_script.main(eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--limit", "2")) == 1
    assert "results without a run record (run.json)" in caplog.text and "--overwrite" in caplog.text


def test_a_killed_run_leaves_no_metrics_that_look_current(tmp_path, tiny_model_dir, tiny_dataset_dir):
    out = tmp_path / "eval"
    argv = eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--batch_size", "1", "--max_new_tokens", "40")
    assert test_script.main([*argv, "--limit", "2"]) == 0
    assert metrics_of(out)["total"] == 2
    process = subprocess.Popen([sys.executable, str(REPO / "test.py"), *argv], cwd=REPO, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: (out / "results.csv").read_text().count("squad_v2") >= 3, process)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert not (out / "metrics.json").exists(), "metrics.json of the 2-row run must not outlive the longer run"
    assert test_script.main(argv) == 0
    assert metrics_of(out)["total"] == 8 == len(read_results(out / "results.csv"))


def test_a_row_of_a_question_the_run_does_not_ask_is_refused(tmp_path, caplog, tiny_model_dir, tiny_dataset_dir):
    """A row added to a finished run's results.csv (another run's, or edited by hand) was resumed and scored: its
    metrics.json counted 9 of 8 questions. The re-run names the row and writes nothing."""
    out = tmp_path / "eval"
    argv = eval_argv(tiny_model_dir, tiny_dataset_dir, out)
    assert test_script.main(argv) == 0
    assert metrics_of(out)["total"] == 8
    metrics = (out / "metrics.json").read_bytes()
    foreign = squad_row("elsewhere", 1.0) | {"title": "T"}
    ResultsWriter(out / "results.csv", result_columns(squad_v2.TASK)).write([foreign])
    results = (out / "results.csv").read_bytes()
    caplog.clear()
    assert test_script.main(argv) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"{out / 'results.csv'}: line 10 is a row of example_id 'elsewhere', which is not one of the 8 questions this "
        "run asks: the file was changed outside test.py; delete that row, or pass --overwrite to start again"
    ]
    assert (out / "metrics.json").read_bytes() == metrics and (out / "results.csv").read_bytes() == results
    assert "loaded" not in caplog.text  # refused before loading the model


def test_a_shard_row_of_a_question_the_run_does_not_ask_is_not_merged(tmp_path):
    columns = result_columns(squad_v2.TASK)
    rows = [squad_row(qid, 1.0) | {"title": "T"} for qid in ("q1", "q2", "elsewhere")]
    ResultsWriter(shard_path(tmp_path, 0), columns).write(rows[:1])
    ResultsWriter(shard_path(tmp_path, 1), columns).write(rows[1:])
    message = (
        f"{shard_path(tmp_path, 1)}: line 3 is a row of example_id 'elsewhere', which is not one of the 2 questions "
        "this run asks: the file was changed outside test.py; delete that row, or pass --overwrite to start again"
    )
    with pytest.raises(InputError) as answered:
        answered_ids(tmp_path, columns, ["q1", "q2"])
    with pytest.raises(InputError) as merged:
        merge_shards(tmp_path, columns, ["q1", "q2"])
    assert str(answered.value) == str(merged.value) == message
    assert not (tmp_path / "results.csv").exists()
    assert answered_ids(tmp_path, columns, ["q1", "q2", "elsewhere", "q3"]) == {"q1", "q2", "elsewhere"}


def test_a_results_file_cut_inside_a_character_resumes(tmp_path):
    columns = list(RESULT_COLUMNS)
    path = tmp_path / "results.csv"
    row = {c: "" for c in columns} | {"example_id": "q1", "id": "q1", "task": "squad_v2", "answers": ["é"]}
    row |= {"raw_output": '{"answer": "café"}', "exact": 1.0, "f1": 1.0, "prompt_tokens": 1, "completion_tokens": 1}
    writer = ResultsWriter(path, columns)
    writer.write([row])
    writer.write([row | {"example_id": "q2", "id": "q2"}])
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex("é".encode()) + 1])  # the crash cut "é" (2 bytes) in two
    resumed = ResultsWriter(path, columns)
    assert resumed.done == {"q1"}
    assert path.read_text(encoding="utf-8").count("\n") == 2  # header and q1, nothing of q2

    path.write_bytes(data.replace("café".encode(), b"caf\xff", 1))  # a bad byte that no crash makes
    with pytest.raises(InputError, match="line 2 is not UTF-8"):
        ResultsWriter(path, columns)


# ------------------------------------------------------------------------------------------- summaries


def write_run(folder: Path, rows: list[dict], examples: int | None = None) -> Path:
    folder.mkdir(parents=True)
    writer = ResultsWriter(folder / "results.csv", list(RESULT_COLUMNS))
    writer.write(rows)
    if examples is not None:
        (folder / "run.json").write_text(json.dumps({"settings": {}, "examples": examples}))
    return folder / "results.csv"


def squad_row(qid: str, exact: float) -> dict:
    return {
        "example_id": qid, "id": qid, "task": "squad_v2", "question": "q?", "answers": ["a"], "raw_output": "",
        "parsed_answer": "a", "valid_json": True, "answer_found": True, "exact": exact, "f1": exact,
        "has_answer": True, "abstained": False, "prompt_tokens": 5, "completion_tokens": 2,
    }  # fmt: skip


def test_summaries_count_a_repeated_row_once_and_mark_partial_runs(tmp_path, caplog, capsys):
    repeated = write_run(tmp_path / "repeated", [squad_row("q1", 1.0), squad_row("q2", 0.0), squad_row("q1", 1.0)], 2)
    partial = write_run(tmp_path / "partial", [squad_row("q1", 1.0)], examples=4)
    legacy = write_run(tmp_path / "legacy", [squad_row("q1", 1.0)])
    csv_out = tmp_path / "table.csv"
    assert summarize_results.main([str(repeated), str(partial), str(legacy), "--output", str(csv_out)]) == 0
    assert "1 rows repeat an earlier row's id (first: 'q1', line 4)" in caplog.text
    assert "partial (1/4) questions answered" in caplog.text
    import pandas as pd

    table = pd.read_csv(csv_out, index_col="run")
    assert table.loc["repeated", "total"] == 2 and table.loc["repeated", "exact"] == 50.0
    assert table.loc["repeated", "status"] == "complete"
    assert table.loc["partial", "status"] == "partial (1/4)"
    assert table.loc["legacy", "status"] == "unknown"


# ------------------------------------------------------------------------------------------- a user's mistakes


def run_case(script, argv: list, caplog, capsys) -> tuple[int, str]:
    """Run a script's main in-process: its exit code (argparse's exit 2 too) and all it logged and wrote to stderr."""
    caplog.clear()
    capsys.readouterr()
    try:
        code = script.main([str(a) for a in argv])
    except SystemExit as e:  # argparse: exit 2 with the message on stderr
        code = e.code
    return code, caplog.text + capsys.readouterr().err


def test_every_users_mistake_gets_one_message_and_no_output(
    tmp_path, capsys, caplog, tiny_model_dir, tiny_dataset_dir
):
    """The table of the issue: each case exits non-zero with a message naming the option or file, before any output
    is written."""
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lora_r: 8\nlearning_rate: [1e-4\n")
    list_yaml = tmp_path / "list.yaml"
    list_yaml.write_text("- lora_r: 8\n")
    corrupt = make_adapter(tiny_model_dir, tmp_path / "corrupt_adapter", seed=0)
    (corrupt / "adapter_config.json").write_text('{"peft_type": "LORA", "r": ')
    torn = make_adapter(tiny_model_dir, tmp_path / "torn_adapter", seed=0)
    truncate(torn / "adapter_model.safetensors")
    not_a_dataset = tmp_path / "not_a_dataset"
    not_a_dataset.mkdir()
    results = write_run(tmp_path / "badjson", [squad_row("q1", 1.0)])
    results.write_text(results.read_text().replace('"[""a""]"', "[oops"))
    no_weights = tmp_path / "no_weights"  # config.json passes the early check: loading fails after the folder lock
    shutil.copytree(tiny_model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()

    out = tmp_path / "out"
    model, data = tiny_model_dir, tiny_dataset_dir
    cases = [
        # (script, argv, what the message names)
        (train, train_argv(model, data, out, "--per_device_train_batch_size", "0"), "--per_device_train_batch_size 0"),
        (train, train_argv(model, data, out, "--gradient_accumulation_steps", "0"), "--gradient_accumulation_steps 0"),
        (train, train_argv(model, data, out, "--max_train_examples", "-5"), "--max_train_examples -5"),
        (train, train_argv(model, data, out, "--learning_rate", "0"), "--learning_rate 0"),
        (train, train_argv(model, data, out, "--lora_r", "0"), "--lora_r 0"),
        (train, train_argv(model, data, out, "--lora_dropout", "1.5"), "--lora_dropout 1.5"),
        (train, train_argv(tmp_path / "nowhere", data, out), "no such folder"),
        (train, train_argv("someone/not-cached-model", data, out), "not in the local cache while HF_HUB_OFFLINE"),
        (train, train_argv("not-cached-model", data, out), "not in the local cache while HF_HUB_OFFLINE"),
        (train, train_argv(not_a_dataset, data, out), "a folder without config.json"),
        (train, train_argv(corrupt, data, out), "it is a LoRA adapter: pass it as --adapter_path"),
        (train, train_argv(model, tmp_path / "nowhere", out), "--dataset_path"),
        (train, train_argv(model, data, out, "--resume_from_checkpoint", str(tmp_path)), "cannot resume from it"),
        (train, train_argv(model, data, out, "--hub_repo_id", "noslash"), "expected USER_OR_ORG/NAME"),
        # found after the output folder is locked (and created): the folder goes again, with its lock file
        (train, train_argv(model, data, out, "--max_length", "16"), "no training example fits --max_length 16"),
        (train, train_argv(no_weights, data, out / "nested"), "cannot load the model"),
        (train, ["--config", str(tmp_path / "missing.yaml")], "missing.yaml: no such file"),
        (train, ["--config", str(bad_yaml)], "not valid YAML at line 3"),
        (train, ["--config", str(list_yaml)], "holds a YAML list, not a mapping"),
        (train, ["--config", str(tmp_path)], "a folder, not a YAML recipe file"),
        (test_script, eval_argv(model, data, out, "--limit", "0"), "--limit 0"),
        (test_script, eval_argv(model, data, out, "--limit", "-3"), "--limit -3"),
        (test_script, eval_argv(model, data, out, "--batch_size", "0"), "--batch_size 0"),
        (test_script, eval_argv(model, data, out, "--max_new_tokens", "0"), "--max_new_tokens 0"),
        (test_script, eval_argv(model, data, out, "--num_beams", "0"), "--num_beams 0"),
        (test_script, eval_argv(model, data, out, "--do_sample", "--temperature", "0"), "--temperature 0"),
        (test_script, eval_argv(model, data, out, "--do_sample", "--top_p", "1.5"), "--top_p 1.5"),
        (test_script, eval_argv(model, data, out, "--split", "dev"), "no split 'dev'"),
        (test_script, eval_argv(model, not_a_dataset, out), "not a dataset folder"),
        (test_script, eval_argv(model, data, out, "--adapter_path", str(corrupt)), "adapter_config.json: not valid"),
        (test_script, eval_argv(model, data, out, "--adapter_path", str(torn)), "is cut short"),
        (test_script, eval_argv(model, data, out, "--adapter_path", str(tmp_path)), "no adapter_config.json"),
        (test_script, eval_argv(tmp_path / "nowhere", data, out), "no such folder"),
        (test_script, eval_argv(no_weights, data, out / "nested"), "cannot load the model"),
        (test_script, ["--config", str(bad_yaml)], "not valid YAML"),
        (summarize_results, [str(results)], "line 2 has '[oops'"),
        (summarize_results, [str(tmp_path / "nowhere.csv")], "no such results file"),
    ]
    failures = []
    for script, argv, expected in cases:
        code, message = run_case(script, argv, caplog, capsys)
        if code not in (1, 2) or expected not in message or "Traceback" in message or out.exists():
            failures.append(f"{script.__name__} {argv[-2:]}: exit {code}, {message[-300:]!r}")
    assert not failures, "\n".join(failures)


def test_results_of_another_task_are_refused_before_loading_the_model(
    tmp_path, caplog, tiny_model_dir, tiny_dataset_dir
):
    out = tmp_path / "eval"
    write_run(out, [squad_row("q1", 1.0) | {"task": "multiwoz"}], examples=1)
    (out / "run.json").write_text(json.dumps({"settings": {"task": "multiwoz"}, "examples": 1}))
    assert test_script.main(eval_argv(tiny_model_dir, tiny_dataset_dir, out)) == 1
    assert "task: 'multiwoz' in run.json, 'squad_v2' now" in caplog.text
    assert "loaded" not in caplog.text


def test_an_adapter_saved_without_tensors_is_named(tmp_path):
    """PEFT writes an empty adapter_model.safetensors when it finds none of its names in the state dict (seen with
    nested FSDP units): train.py stops on it instead of reporting a trained adapter."""
    import torch
    from safetensors.torch import save_file

    from llama_squad.checkpoints import adapter_problem

    assert adapter_problem(tmp_path) == f"{tmp_path / 'adapter_model.safetensors'} was not written"
    save_file({}, tmp_path / "adapter_model.safetensors")
    assert adapter_problem(tmp_path).endswith("adapter_model.safetensors holds no tensor")
    save_file({"base_model.model.lora_A.weight": torch.zeros(2, 3)}, tmp_path / "adapter_model.safetensors")
    assert adapter_problem(tmp_path) is None


# ------------------------------------------------------------------------------------------- finished runs


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a training output folder (checkpoints too), by relative path, except the OS lock."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".llama_squad.lock"
    }


def test_a_finished_run_rerun_changes_nothing_and_finishes_only_what_is_missing(
    tmp_path, caplog, tiny_model_dir, tiny_dataset_dir
):
    """Re-running a finished --max_steps run (as after a crash during the merge) trains no step more: the Trainer
    resumed from the last checkpoint would take one step past max_steps and rewrite the adapter and merged/."""
    out = tmp_path / "out"
    argv = train_argv(tiny_model_dir, tiny_dataset_dir, out, "--max_steps", "2", "--lr_scheduler_type", "constant",
                      "--merge")  # fmt: skip
    assert train.main(argv) == 0
    finished = snapshot(out)
    assert "merged/model.safetensors" in finished and "checkpoint-2/adapter_model.safetensors" in finished

    caplog.set_level(logging.INFO)
    for _ in range(2):
        caplog.clear()
        assert train.main(argv) == 0
        assert "training finished at step 2 of 2" in caplog.text
        assert snapshot(out) == finished

    # a crash during the merge: merged/ is missing; the re-run merges, and writes nothing else
    shutil.rmtree(out / "merged")
    assert train.main(argv) == 0
    assert snapshot(out) == finished

    # a crash between the last checkpoint and the final save: the adapter comes from checkpoint-2, as trained, and
    # so does trainer_state.json (without the summary entry the end of training logs)
    for name in ("adapter_model.safetensors", "trainer_state.json", "README.md"):
        (out / name).unlink()
    assert train.main(argv) == 0
    restored = snapshot(out)
    assert json.loads(restored.pop("trainer_state.json"))["global_step"] == 2
    assert restored == {k: v for k, v in finished.items() if k != "trainer_state.json"}

    # more steps asked for: the run goes on from checkpoint-2
    assert train.main([*argv, "--max_steps", "4"]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert (out / "adapter_model.safetensors").read_bytes() != finished["adapter_model.safetensors"]


# ------------------------------------------------------------------------------------------- an adapter's base model


def other_weights(model_dir: Path, out: Path) -> Path:
    """A model of the same shape as ``model_dir``'s, with other weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def test_an_adapter_on_another_base_model_is_refused(tmp_path, caplog, tiny_model_dir, tiny_dataset_dir):
    import yaml

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    other = other_weights(tiny_model_dir, tmp_path / "other")
    out = tmp_path / "eval"
    argv = eval_argv(other, tiny_dataset_dir, out, "--limit", "1", "--adapter_path", adapter)
    assert test_script.main([str(a) for a in argv]) == 1
    assert (
        f"--adapter_path {adapter} was trained on {tiny_model_dir} ({adapter / 'adapter_config.json'}), but "
        f"--model_name_or_path {other} is another model (other weights)" in caplog.text
    )
    assert "--allow_base_mismatch to apply it anyway" in caplog.text and not out.exists()

    caplog.clear()
    assert test_script.main([str(a) for a in [*argv, "--allow_base_mismatch"]]) == 0
    assert "applying it anyway (--allow_base_mismatch)" in caplog.text

    # a copy of the base model elsewhere is the same model
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "copy"))
    argv = eval_argv(copy, tiny_dataset_dir, tmp_path / "eval_copy", "--limit", "1", "--adapter_path", adapter)
    assert test_script.main([str(a) for a in argv]) == 0

    # train.py's record comes first: run_config.yaml names the model the adapter was trained on
    (adapter / "run_config.yaml").write_text(yaml.safe_dump({"model": {"model_name_or_path": str(other)}}))
    argv = eval_argv(tiny_model_dir, tiny_dataset_dir, tmp_path / "eval_record", "--adapter_path", adapter)
    assert test_script.main([str(a) for a in argv]) == 1
    assert f"was trained on {other} ({adapter / 'run_config.yaml'})" in caplog.text

    # a record of a path that is not on this machine cannot be compared: a warning, not an error
    (adapter / "run_config.yaml").write_text(yaml.safe_dump({"model": {"model_name_or_path": "/elsewhere/model"}}))
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/elsewhere/m"}))
    caplog.clear()
    argv = eval_argv(other, tiny_dataset_dir, tmp_path / "eval_elsewhere", "--limit", "1", "--adapter_path", adapter)
    assert test_script.main([str(a) for a in argv]) == 0
    assert f"cannot check that the adapter {adapter} was trained on --model_name_or_path {other}" in caplog.text


# ------------------------------------------------------------------------------------------- fail before the work


def test_unreadable_scores_for_the_cards_fail_train_before_training(
    tmp_path, caplog, tiny_model_dir, tiny_dataset_dir
):
    out = tmp_path / "out"
    (out / "eval").mkdir(parents=True)
    (out / "eval" / "metrics.json").write_text('{"exact": 50.0, ')
    assert train.main(train_argv(tiny_model_dir, tiny_dataset_dir, out, "--merge")) == 1
    assert f"{out / 'eval' / 'metrics.json'}: the scores of an earlier test.py run" in caplog.text
    assert f"re-run test.py into {out / 'eval'}, or delete {out / 'eval' / 'metrics.json'}" in caplog.text
    assert "download" not in caplog.text and "loaded" not in caplog.text
    assert not list(out.glob("checkpoint-*")) and not (out / "adapter_model.safetensors").exists()


def test_a_broken_pause_file_fails_before_the_model_loads(tmp_path, caplog, tiny_model_dir, tiny_dataset_dir):
    caplog.set_level(logging.INFO)
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    (adapter / "pause_tokens.json").write_text('{"tokens": [], "position": "assistant"}')
    argv = eval_argv(tiny_model_dir, tiny_dataset_dir, tmp_path / "eval", "--adapter_path", adapter)
    assert test_script.main([str(a) for a in argv]) == 1
    assert f"{adapter / 'pause_tokens.json'}: expected" in caplog.text
    assert "loaded" not in caplog.text and not (tmp_path / "eval").exists()


def test_prompts_beyond_the_models_context_are_counted_in_one_warning(
    tmp_path, caplog, tiny_model_dir, tiny_dataset_dir
):
    short = Path(shutil.copytree(tiny_model_dir, tmp_path / "short_context"))
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 110}))
    argv = eval_argv(short, tiny_dataset_dir, tmp_path / "eval", "--limit", "4")
    assert test_script.main([str(a) for a in argv]) == 0
    warnings = [r.getMessage() for r in caplog.records if "run past the model's context" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("4 of 4 prompts with their answers (--max_new_tokens 6) run past the model's")


# ------------------------------------------------------------------------------------------- the machine's errors


@pytest.fixture
def disks(tmp_path):
    """Two small file systems of our own: ``full`` (a tmpfs filled to its last byte, holding a copy of what the
    case needs first) and ``read_only`` (a read-only tmpfs). Mounting needs root (CI runs as root)."""
    mounted = []

    def mount(name: str, *options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(point)],
                                capture_output=True, text=True)  # fmt: skip
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to fill ({result.stderr.strip()}): the full-disk cases need root")
        mounted.append(point)
        return point

    def fill(point: Path) -> None:
        with open(point / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:  # full, to the last page
                pass

    try:
        yield {"mount": mount, "fill": fill}
    finally:
        for point in mounted:
            subprocess.run(["umount", "-l", str(point)], check=False)


def test_every_os_error_gets_one_message_naming_the_path_and_the_fix(
    tmp_path, capsys, caplog, disks, two_checkpoints, tiny_model_dir, tiny_dataset_dir
):
    """The machine's errors of the issue, from every entry point: a full disk, a read-only folder, an output folder
    that is a file, a torn weights file, hand-edited state files. Each exits 1 with one message naming the path and
    what to do, never a traceback."""
    from conftest import write_squad

    import create_dataset
    from llama_squad import export, squad_eval

    full = disks["mount"]("full", "size=1m")
    trained = full / "trained"
    trained.mkdir()
    for name in ("run_config.yaml", "adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(two_checkpoints / name, trained)
    disks["fill"](full)
    read_only = disks["mount"]("read_only", "ro", "size=64k")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    torn = Path(shutil.copytree(tiny_model_dir, tmp_path / "torn_model"))
    truncate(torn / "model.safetensors")
    garbled = Path(shutil.copytree(two_checkpoints, tmp_path / "garbled"))
    (garbled / "run_config.yaml").write_text("model: {model_name_or_path: x\n")
    bad_record = tmp_path / "bad_record"
    write_run(bad_record, [squad_row("q1", 1.0)])
    (bad_record / "run.json").write_text(json.dumps({"settings": {}, "examples": "many"}))
    squad = write_squad(tmp_path / "squad.json")
    results = write_run(tmp_path / "results", [squad_row("q1", 1.0)], examples=1)
    data_file, predictions = tmp_path / "data.json", tmp_path / "predictions.json"
    data_file.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "a b", "qas": [
        {"id": "q1", "question": "q?", "answers": [{"text": "a", "answer_start": 0}]}]}]}]}))  # fmt: skip
    predictions.write_text(json.dumps({"q1": "a"}))

    model, data = tiny_model_dir, tiny_dataset_dir
    disk_full = "No space left on device; free some space on that disk (0.0 MB free), or write to another disk"
    read_only_fs = "Read-only file system; write to a folder on a writable disk"
    new_dataset = ["--task", "squad_v2", "--train_file", squad, "--test_articles", "4:6"]
    cases = [
        # (script, argv, what the message says)
        (create_dataset, [*new_dataset, "--output_dir", full / "ds"], f"{full / 'ds'}: {disk_full}"),
        (train, train_argv(model, data, full / "out"), f"{full / 'out' / 'run_config.yaml'}: {disk_full}"),
        (test_script, eval_argv(model, data, full / "eval"), f"{full / 'eval' / 'run.json'}: {disk_full}"),
        (summarize_results, [results, "--output", full / "table.csv"], f"{full / 'table.csv'}: {disk_full}"),
        (summarize_results, [results, "--plot", full / "summary.png"], f"{full / 'summary.png'}: {disk_full}"),
        (export, [trained], f"{trained / 'README.md'}: {disk_full}"),
        (
            squad_eval,
            [data_file, predictions, "--out_file", full / "scores.json"],
            f"{full / 'scores.json'}: {disk_full}",
        ),  # fmt: skip
        (create_dataset, [*new_dataset, "--output_dir", read_only / "ds"], f"{read_only / 'ds'}: {read_only_fs}"),
        (train, train_argv(model, data, read_only / "out"), f"{read_only / 'out'}: {read_only_fs}"),
        (test_script, eval_argv(model, data, read_only / "eval"), f"{read_only / 'eval'}: {read_only_fs}"),
        (train, train_argv(model, data, a_file), f"{a_file} is a file, not a folder: choose another path"),
        (test_script, eval_argv(model, data, a_file / "eval"), f"{a_file} is a file, not a folder"),
        (test_script, eval_argv(torn, data, tmp_path / "eval_torn"), "model.safetensors is cut short"),
        (train, train_argv(torn, data, tmp_path / "out_torn"), "model.safetensors is cut short"),
        (train, train_argv(model, data, garbled), f"{garbled / 'run_config.yaml'}: not valid YAML at line 2"),
        (export, [garbled], f"{garbled / 'run_config.yaml'}: not valid YAML at line 2"),
        (test_script, eval_argv(model, data, bad_record), "'examples' is 'many', not a count of questions"),
    ]
    failures = []
    for script, argv, expected in cases:
        code, message = run_case(script, argv, caplog, capsys)
        if code != 1 or expected not in message or "Traceback" in message:
            failures.append(f"{script.__name__} {argv[-2:]}: exit {code}, {message[-400:]!r}")
    assert not failures, "\n".join(failures)
    assert sorted(p.name for p in full.iterdir()) == ["filler", "trained"]  # nothing left behind

"""test.py under `accelerate launch`: two real CPU processes (gloo) split the questions, each writes a resumable
shard, and the main process merges them into the results and metrics of a one-process run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import test as test_script
from llama_squad.files import InputError
from llama_squad.results import SHARDS, ResultsWriter, merge_shards, read_results, result_columns, shard_path
from llama_squad.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
SCORES = ["example_id", "raw_output", "parsed_answer", "valid_json", "exact", "f1", "has_answer", "abstained"]


def eval_argv(model_dir, data_dir, out, *extra):
    # batch size 1: each question is generated alone in both runs, so the outputs cannot differ by padding
    return ["--model_name_or_path", str(model_dir), "--dataset_path", str(data_dir), "--output_dir", str(out),
            "--batch_size", "1", *extra]  # fmt: skip


def launch(argv, processes=2, **kwargs):
    """``accelerate launch`` of test.py on ``processes`` CPU processes (torchrun underneath, gloo between them)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "0", str(REPO / "test.py"), *argv]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def by_id(path: Path) -> pd.DataFrame:
    return read_results(path).set_index("id").sort_index()[SCORES]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir, tiny_dataset_dir):
    """The reference: one process, 40 new tokens at most."""
    out = tmp_path_factory.mktemp("one") / "eval"
    assert test_script.main(eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--max_new_tokens", "40")) == 0
    return out


def test_two_processes_give_the_results_of_one(tmp_path, one_process, tiny_model_dir, tiny_dataset_dir):
    out = tmp_path / "eval"
    process = launch(eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--max_new_tokens", "40"))
    log = process.communicate(timeout=600)[0].decode()
    assert process.returncode == 0, log[-3000:]
    # the main process answers its half; the other one logs warnings only, tagged with its rank
    assert log.count("INFO test: answered 4 questions") == 1 and "[rank 0] INFO test: answered 4" in log
    pd.testing.assert_frame_equal(by_id(out / "results.csv"), by_id(one_process / "results.csv"))
    assert json.loads((out / "metrics.json").read_text()) == json.loads((one_process / "metrics.json").read_text())
    record = json.loads((out / "run.json").read_text())
    assert record["processes"] == 2 and record["examples"] == 8
    assert not (out / SHARDS).exists(), "the shards are merged, then removed"
    # the merged file is in question order
    assert read_results(out / "results.csv")["id"].tolist() == sorted(by_id(out / "results.csv").index)


def test_a_killed_distributed_run_resumes_its_shards(tmp_path, one_process, tiny_model_dir, tiny_dataset_dir):
    out = tmp_path / "eval"
    argv = eval_argv(tiny_model_dir, tiny_dataset_dir, out, "--max_new_tokens", "40")
    process = launch(argv, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            shards = list((out / SHARDS).glob("*.csv")) if (out / SHARDS).exists() else []
            if sum(p.read_text().count("squad_v2") for p in shards) >= 2:
                break
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers, at once
    finally:
        process.wait()
    assert not (out / "results.csv").exists(), "killed before the merge"
    before = pd.concat([read_results(p) for p in sorted((out / SHARDS).glob("*.csv"))]).set_index("id")
    assert 2 <= len(before) < 8

    process = launch(argv)
    log = process.communicate(timeout=600)[0].decode()
    assert process.returncode == 0, log[-3000:]
    assert "resuming after" in log
    after = by_id(out / "results.csv")
    pd.testing.assert_frame_equal(after, by_id(one_process / "results.csv"))
    assert after.loc[before.index, "raw_output"].tolist() == before["raw_output"].tolist()


def test_a_missing_shard_is_an_error_not_a_smaller_table(tmp_path):
    columns = result_columns(get_task("squad_v2"))
    ids = [f"q{i}" for i in range(6)]
    writer = ResultsWriter(shard_path(tmp_path, 0), columns)
    writer.write([{c: "" for c in columns} | {"example_id": i, "id": i} for i in ids[0::2]])  # rank 0's half only
    with pytest.raises(InputError, match=r"3 of 6 questions have no row in \['results-rank000.csv'\]"):
        merge_shards(tmp_path, columns, ids)
    assert not (tmp_path / "results.csv").exists() and shard_path(tmp_path, 0).exists()
    ResultsWriter(shard_path(tmp_path, 1), columns).write(
        [{c: "" for c in columns} | {"example_id": i, "id": i} for i in ids[1::2]]
    )
    merged = merge_shards(tmp_path, columns, ids)
    assert pd.read_csv(merged)["id"].tolist() == ids and not (tmp_path / SHARDS).exists()

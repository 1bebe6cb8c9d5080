"""A task is one object: what code outside tasks/ asks of it, and a third task added as one package plus one line."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

import create_dataset
import summarize_results
import test as test_script
import train
from llama_squad import tasks
from llama_squad.tasks.base import Task

REPO = Path(__file__).resolve().parents[1]


def test_code_outside_tasks_never_names_a_task():
    found = subprocess.run(
        ["git", "grep", "-n", "-E", r"squad_v2\.NAME|multiwoz\.NAME|task == \"|if task ==", "--", "llama_squad",
         ":!llama_squad/tasks"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert found.stdout == ""


@pytest.mark.parametrize("name", tasks.task_names())
def test_every_registered_task_is_a_whole_task(name):
    task = tasks.get_task(name)
    assert isinstance(task, Task) and task.name == name
    assert task.title and task.headline_metrics and task.signature_metric and task.card.metrics
    form = task.chat_form(type("Options", (), {"system_prompt": "", "prompt": "single_turn"})())
    assert form.material and form.question and form.no_answer and form.api_name


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def questions(prefix: str, n: int) -> list[dict]:
    rows = []
    for k in range(n):
        context = f"The ferry to Isle {k} leaves at {7 + k % 5} o'clock from pier {k}."
        answer = f"pier {k}" if k % 2 == 0 else ""
        question = "Where does the ferry leave from?" if answer else "Who owns the ferry?"
        rows.append({"id": f"{prefix}{k}", "context": context, "question": question, "answer": answer})
    return rows


def test_a_third_task_is_one_package_and_one_registry_line(tmp_path, monkeypatch, capsys, tiny_model_dir):
    """The JSON Lines QA task of tests/fixtures/jsonl_qa, registered with one line: built, trained for a few steps
    and evaluated end to end by the four scripts, none of which names it."""
    monkeypatch.setitem(tasks.TASKS, "jsonl_qa", "fixtures.jsonl_qa")  # the registry line

    train_file = write_jsonl(tmp_path / "train.jsonl", questions("tr", 20))
    test_file = write_jsonl(tmp_path / "test.jsonl", questions("te", 6))
    data = tmp_path / "data"
    assert create_dataset.main(["--task", "jsonl_qa", "--train_file", str(train_file), "--test_file", str(test_file),
                                "--output_dir", str(data)]) == 0  # fmt: skip

    out = tmp_path / "model"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(data), "--output_dir", str(out),
            "--max_steps", "3", "--per_device_train_batch_size", "4", "--save_steps", "3", "--eval_steps", "3",
            "--max_length", "256", "--lora_r", "4", "--lora_alpha", "8", "--report_to", "none",
            "--disable_tqdm", "true"]  # fmt: skip
    assert train.main(argv) == 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    assert any("eval_loss" in entry for entry in json.loads((out / "trainer_state.json").read_text())["log_history"])

    evaluation = tmp_path / "eval"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--adapter_path", str(out), "--dataset_path", str(data),
            "--output_dir", str(evaluation), "--max_new_tokens", "8"]  # fmt: skip
    assert test_script.main(argv) == 0
    rows = pd.read_csv(evaluation / "results.csv", dtype=str, keep_default_na=False)
    assert sorted(rows["id"]) == [f"te{k}" for k in range(6)] and set(rows["task"]) == {"jsonl_qa"}
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["task"] == "jsonl_qa" and metrics["total"] == 6
    assert metrics["exact"] == pytest.approx(100 * rows["exact"].astype(float).mean(), abs=1e-4)

    capsys.readouterr()
    assert summarize_results.main([str(evaluation / "results.csv"), "--plot", str(tmp_path / "summary.png")]) == 0
    assert "jsonl_qa" in capsys.readouterr().out and (tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_the_library_command_lines_are_installed_entry_points():
    """``llama-squad-chat``, ``-export``, ``-general-eval`` and ``-eval`` (pyproject's [project.scripts]) run the
    library's CLIs, as ``python -m`` does."""
    import importlib
    from importlib.metadata import entry_points

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads pyproject.toml with tomllib")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    names = ["llama-squad-chat", "llama-squad-eval", "llama-squad-export", "llama-squad-general-eval"]
    assert sorted(scripts) == names
    installed = {e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("llama-squad")}
    assert installed == scripts  # make install put them in the venv's bin/
    for target in scripts.values():
        module, function = target.split(":")
        with pytest.raises(SystemExit) as done:
            getattr(importlib.import_module(module), function)(["--help"])
        assert done.value.code == 0

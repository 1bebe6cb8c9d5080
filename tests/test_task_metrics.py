"""The task's scores while training (train.py --eval_questions): logged at every evaluation under their names, the
best checkpoint kept by them, the same in 2 processes as in 1, intact across a crash, and the mistakes refused."""

import json
from pathlib import Path

import pytest

import train
from llama_squad.evaluation import during_training

SQUAD_METRICS = ["eval_HasAns_exact", "eval_NoAns_exact", "eval_exact", "eval_f1", "eval_valid_json"]


def train_argv(model_dir, data_dir, out, *extra) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir), "--dataset_path", str(data_dir), "--output_dir", str(out),
        "--max_steps", "4", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--learning_rate", "5e-3", "--warmup_steps", "0", "--logging_steps", "1", "--eval_steps", "2",
        "--save_steps", "2", "--max_length", "256", "--lora_r", "4", "--lora_alpha", "8", "--report_to", "none",
        "--seed", "0", "--disable_tqdm", "true", "--eval_questions", "4", "--max_new_tokens", "6", "--force_answer",
        *extra,
    ]  # fmt: skip


def task_entries(out: Path) -> list[dict]:
    """The log-history entries of the task's scores, by step."""
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "eval_task_seconds" in entry]


def test_every_evaluation_logs_the_tasks_scores(tmp_path, tiny_model_dir, tiny_dataset_dir, monkeypatch):
    asked = []
    run = during_training.TaskEvaluation.run

    def spy(self, *args, **kwargs):
        asked.append([q["id"] for q in self.questions])
        return run(self, *args, **kwargs)

    monkeypatch.setattr(during_training.TaskEvaluation, "run", spy)
    out = tmp_path / "out"
    assert train.main(train_argv(tiny_model_dir, tiny_dataset_dir, out)) == 0
    entries = task_entries(out)
    assert [e["step"] for e in entries] == [2, 4]
    for entry in entries:
        assert set(SQUAD_METRICS) <= set(entry) and 0 <= entry["eval_exact"] <= 100
        assert entry["eval_task_seconds"] > 0 and entry["eval_task_questions_per_s"] > 0
    assert len(asked) == 2 and asked[0] == asked[1] and len(asked[0]) == 4  # the same questions every time
    from PIL import Image

    assert Image.open(out / "loss.png").size[0] > 1600  # three panels: loss, perplexity, the task's scores


def scripted_scores(monkeypatch, by_step: dict[int, float]) -> None:
    """The task's exact match at each step as given (the model is the tiny random one): a constructed case."""

    def run(self, model, accelerator, sharded=False):
        step = len(scripted_scores.calls) * 2 + 2
        scripted_scores.calls.append(step)
        return {"eval_exact": by_step[step], "eval_task_seconds": 1.0, "eval_task_questions_per_s": 4.0}

    scripted_scores.calls = []
    monkeypatch.setattr(during_training.TaskEvaluation, "run", run)


def test_the_task_metric_keeps_its_best_checkpoint_where_the_loss_would_keep_another(
    tmp_path, tiny_model_dir, tiny_dataset_dir, monkeypatch
):
    """The loss falls from step 2 to step 4 (learning rate 5e-3 on the same examples), exact match is best at step
    2: with --metric_for_best_model exact the adapter, the merged model and the card are step 2's, and rotation
    keeps it."""
    scripted_scores(monkeypatch, {2: 80.0, 4: 20.0})
    out = tmp_path / "out"
    argv = train_argv(tiny_model_dir, tiny_dataset_dir, out, "--metric_for_best_model", "exact",
                      "--load_best_model_at_end", "--save_total_limit", "1", "--merge")  # fmt: skip
    assert train.main(argv) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    losses = {e["step"]: e["eval_loss"] for e in state["log_history"] if "eval_loss" in e}
    assert losses[4] < losses[2]  # the loss would have kept step 4
    assert state["best_model_checkpoint"].endswith("checkpoint-2") and state["best_metric"] == 80.0
    assert (out / "checkpoint-2").is_dir()  # --save_total_limit 1 never rotates the best checkpoint out
    from safetensors.torch import load_file

    final, best = (
        load_file(out / "adapter_model.safetensors"),
        load_file(out / "checkpoint-2" / "adapter_model.safetensors"),
    )
    assert final.keys() == best.keys() and all((final[k] == best[k]).all() for k in final)
    card = (out / "README.md").read_text()
    assert "best checkpoint by eval_exact on the validation questions: step 2, eval_exact 80.00" in card
    assert "step 2, eval_exact 80.00" in (out / "merged" / "README.md").read_text()


def test_a_run_killed_during_the_task_evaluation_resumes_with_its_history_and_best_checkpoint(
    tmp_path, tiny_model_dir, tiny_dataset_dir, monkeypatch
):
    scores = {2: 60.0, 4: 30.0, 6: 50.0}
    argv_extra = ["--max_steps", "6", "--metric_for_best_model", "exact", "--load_best_model_at_end"]
    scripted_scores(monkeypatch, scores)
    whole = tmp_path / "whole"
    assert train.main(train_argv(tiny_model_dir, tiny_dataset_dir, whole, *argv_extra)) == 0

    class Killed(Exception):
        pass

    calls = []

    def dies_at_step_4(self, model, accelerator, sharded=False):
        calls.append(1)
        if len(calls) == 2:
            raise Killed("killed during the evaluation of step 4")
        return {"eval_exact": scores[2 * len(calls)], "eval_task_seconds": 1.0, "eval_task_questions_per_s": 4.0}

    monkeypatch.setattr(during_training.TaskEvaluation, "run", dies_at_step_4)
    out = tmp_path / "out"
    with pytest.raises(Killed):
        train.main(train_argv(tiny_model_dir, tiny_dataset_dir, out, *argv_extra))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    scripted_scores(monkeypatch, {2: scores[4], 4: scores[6]})  # resumed after step 2: the next calls are 4 and 6
    assert train.main(train_argv(tiny_model_dir, tiny_dataset_dir, out, *argv_extra)) == 0
    assert [(e["step"], e["eval_exact"]) for e in task_entries(out)] == [(2, 60.0), (4, 30.0), (6, 50.0)]
    resumed, reference = (json.loads((d / "trainer_state.json").read_text()) for d in (out, whole))
    assert resumed["best_metric"] == reference["best_metric"] == 60.0
    assert (
        Path(resumed["best_model_checkpoint"]).name == Path(reference["best_model_checkpoint"]).name == "checkpoint-2"
    )


def test_a_multiwoz_run_logs_joint_goal_accuracy(tmp_path, tiny_model_dir):
    import create_dataset

    demo = Path(__file__).resolve().parents[1] / "data" / "demo"
    data = tmp_path / "data"
    assert create_dataset.main(["--task", "multiwoz", "--data_file", str(demo / "multiwoz_demo.json"), "--val_list",
                                str(demo / "multiwoz_demo_valListFile"), "--test_list",
                                str(demo / "multiwoz_demo_testListFile"), "--max_length", "0",
                                "--output_dir", str(data)]) == 0  # fmt: skip
    out = tmp_path / "out"
    argv = train_argv(tiny_model_dir, data, out, "--max_steps", "2", "--eval_questions", "30", "--max_length", "1024")
    assert train.main(argv) == 0
    (entry,) = task_entries(out)
    assert 0 <= entry["eval_jga"] <= 100 and "eval_jga_fuzzy" in entry and "eval_slot_f1" in entry


def test_more_questions_than_the_split_holds_asks_them_all(tmp_path, caplog, tiny_model_dir, tiny_dataset_dir):
    out = tmp_path / "out"
    assert train.main(train_argv(tiny_model_dir, tiny_dataset_dir, out, "--max_steps", "2",
                                 "--eval_questions", "500")) == 0  # fmt: skip
    assert "--eval_questions 500: the validation split holds 4 questions; asking all" in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--metric_for_best_model", "jga", "--load_best_model_at_end"],
         "--metric_for_best_model jga: not a metric of SQuAD v2; choose loss or one of valid_json, exact, f1, "
         "HasAns_exact, NoAns_exact"),
        (["--eval_questions", "0", "--metric_for_best_model", "exact", "--load_best_model_at_end"],
         "--metric_for_best_model exact: a task metric needs --eval_questions N"),
        (["--eval_strategy", "no", "--save_strategy", "steps"], "--eval_questions 4 with --eval_strategy no"),
        (["--eval_questions", "-1"], "--eval_questions -1: give 0"),
    ],
)  # fmt: skip
def test_mistakes_are_one_message_before_any_work(tmp_path, caplog, tiny_model_dir, tiny_dataset_dir, extra, message):
    out = tmp_path / "out"
    assert train.main(train_argv(tiny_model_dir, tiny_dataset_dir, out, *extra)) == 1
    assert message in caplog.text and "Traceback" not in caplog.text and not out.exists()


def test_no_validation_split_is_one_message(tmp_path, caplog, tiny_model_dir, tiny_dataset_dir):
    from datasets import DatasetDict, load_from_disk

    splits = load_from_disk(str(tiny_dataset_dir))
    data = tmp_path / "data"
    DatasetDict({"train": splits["train"], "test": splits["test"]}).save_to_disk(str(data))
    assert train.main(train_argv(tiny_model_dir, data, tmp_path / "out")) == 1
    assert f"--eval_questions 4: {data} has no validation split (it has train, test)" in caplog.text


def test_two_processes_score_as_one(tmp_path, tiny_model_dir, tiny_dataset_dir):
    """DDP over gloo: each process answers its share, the rows are gathered; the greedy scores of the base model (the
    evaluation before the first step) and of every later evaluation equal the 1-process run's."""
    from test_distributed import accelerate_launch, assert_ok, run, train_args

    extra = ("--eval_strategy", "steps", "--eval_steps", "2", "--eval_on_start", "true", "--eval_questions", "4",
             "--max_new_tokens", "6", "--force_answer", "--per_device_eval_batch_size", "2")  # fmt: skip
    two = tmp_path / "two"
    assert_ok(run(accelerate_launch(*train_args(tiny_model_dir, tiny_dataset_dir, two, *extra))))
    one = tmp_path / "one"
    one_argv = [*train_args(tiny_model_dir, tiny_dataset_dir, one, *extra), "--per_device_train_batch_size", "4"]
    assert train.main(one_argv) == 0  # the same examples per step: 4 per device x 1 process x 2 accumulation steps
    scores = [[{k: e[k] for k in SQUAD_METRICS} | {"step": e["step"]} for e in task_entries(d)] for d in (two, one)]
    assert [e["step"] for e in scores[0]] == [0, 2, 4]
    assert scores[0] == scores[1]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_a_sharded_model_scores_as_one_process(engine, tmp_path, tiny_model_dir, tiny_dataset_dir):
    """FSDP2 or DeepSpeed ZeRO-3 from the shipped config, 2 CPU processes (tests/launch_on_cpu.py): every process
    takes part in every generate call of the sharded model, answers its share of the questions, and the gathered
    scores of every evaluation (the base model's before the first step, then the trained one's) equal a 1-process
    run's of the same steps."""
    import importlib.util

    from test_distributed import ENGINE_CONFIGS, assert_ok, run_sharded, sharded_args, sharded_launch

    if engine == "zero3" and importlib.util.find_spec("deepspeed") is None:
        pytest.fail('DeepSpeed is not installed: pip install -e ".[deepspeed]" (make test installs it)')
    extra = ("--eval_strategy", "steps", "--eval_steps", "2", "--eval_on_start", "true", "--eval_questions", "4",
             "--max_new_tokens", "6", "--force_answer", "--per_device_eval_batch_size", "2")  # fmt: skip
    sharded = tmp_path / engine
    assert_ok(run_sharded(sharded_launch(ENGINE_CONFIGS[engine], *sharded_args(tiny_model_dir, tiny_dataset_dir,
                                                                                sharded, *extra))))  # fmt: skip
    one = tmp_path / "one"
    one_argv = [*sharded_args(tiny_model_dir, tiny_dataset_dir, one, *extra), "--gradient_accumulation_steps", "4"]
    assert train.main(one_argv) == 0  # the same examples per step: 2 per device x 4 accumulation steps
    scores = [
        [{k: e[k] for k in SQUAD_METRICS} | {"step": e["step"]} for e in task_entries(d)] for d in (sharded, one)
    ]
    assert [e["step"] for e in scores[0]] == [0, 2, 4]
    assert scores[0] == scores[1]

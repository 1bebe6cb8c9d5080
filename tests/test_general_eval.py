"""The forgetting check: lm-eval on the base and the tuned model, offline, over a local 10-question task."""

import math
from pathlib import Path

import pandas as pd
import pytest

from llama_squad import general_eval
from llama_squad.general_eval import GeneralEvalArguments, comparison, write_table

TASKS = Path(__file__).parent / "fixtures" / "lm_eval_tasks"
TASK = "llama_squad_tiny_mc"


def lm_eval_results(acc: float, acc_norm: float, n: int = 10) -> dict:
    """The part of lm_eval.simple_evaluate's answer that the table reads."""
    stderr = math.sqrt(acc * (1 - acc) / (n - 1))
    return {
        "results": {
            TASK: {"alias": TASK, "acc,none": acc, "acc_stderr,none": stderr, "acc_norm,none": acc_norm,
                   "acc_norm_stderr,none": "N/A", "sample_len": n},
        },
        "n-samples": {TASK: {"original": n, "effective": n}},
    }  # fmt: skip


def test_comparison_rows_hand_computed(tmp_path):
    rows = comparison(lm_eval_results(0.5, 0.4), lm_eval_results(0.3, 0.4))
    assert [(r["task"], r["metric"], r["base"], r["tuned"], r["n"]) for r in rows] == [
        (TASK, "acc", 0.5, 0.3, 10),
        (TASK, "acc_norm", 0.4, 0.4, 10),
    ]
    assert rows[0]["difference"] == pytest.approx(-0.2) and rows[1]["difference"] == 0.0
    assert rows[0]["base_stderr"] == pytest.approx(math.sqrt(0.25 / 9))
    assert rows[1]["base_stderr"] is None  # lm-eval's "N/A"
    csv_path, md_path = write_table(rows, tmp_path)
    table = pd.read_csv(csv_path)
    assert list(table.columns) == list(general_eval.COLUMNS)
    assert table["difference"].tolist() == pytest.approx([-0.2, 0.0])
    line = md_path.read_text().splitlines()[2]
    assert line == f"| {TASK} | acc | 0.5000 | 0.3000 | -0.2000 | 0.1667 | 0.1528 | 10 |"


def test_options_are_checked_before_loading(tmp_path, caplog):
    argv = ["--tasks", " , ", "--output_dir", str(tmp_path), "--limit", "0", "--include_path", str(tmp_path / "no")]
    assert general_eval.main(argv) == 1
    for message in ("name at least one lm-eval task", "give the tuned model: --adapter_path", "--limit 0",
                    "no such folder of task YAMLs"):  # fmt: skip
        assert message in caplog.text


def test_unknown_task_is_named(tmp_path, caplog, tiny_model_dir):
    pytest.importorskip("lm_eval", reason='lm-eval is the [general-eval] extra: pip install -e ".[general-eval]"')
    argv = ["--tasks", f"{TASK},hellaswgg", "--include_path", str(TASKS), "--output_dir", str(tmp_path),
            "--model_name_or_path", str(tiny_model_dir),
            "--tuned_model_name_or_path", str(tiny_model_dir)]  # fmt: skip
    assert general_eval.main(argv) == 1
    assert "unknown lm-eval task(s) ['hellaswgg']" in caplog.text


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir):
    """Two LoRA adapters of the tiny model: one that changes nothing (B = 0, PEFT's default) and a random one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = {}
    torch.manual_seed(0)
    for name, init in (("identity", True), ("random", False)):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        config = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=init)
        peft_model = get_peft_model(model, config)
        folders[name] = tmp_path_factory.mktemp(name)
        peft_model.save_pretrained(folders[name])
    return folders


def run_general_eval(model_dir, adapter, out) -> pd.DataFrame:
    argv = ["--tasks", TASK, "--include_path", str(TASKS), "--model_name_or_path", str(model_dir),
            "--adapter_path", str(adapter), "--output_dir", str(out), "--device", "cpu",
            "--batch_size", "10"]  # fmt: skip
    assert general_eval.main(argv) == 0
    return pd.read_csv(out / "general_eval.csv")


@pytest.mark.slow
def test_base_vs_tuned_on_a_local_task(tmp_path, tiny_model_dir, adapters):
    pytest.importorskip("lm_eval", reason='lm-eval is the [general-eval] extra: pip install -e ".[general-eval]"')
    same = run_general_eval(tiny_model_dir, adapters["identity"], tmp_path / "identity")
    assert same["metric"].tolist() == ["acc", "acc_norm"] and (same["n"] == 10).all()
    assert ((same["base"] * 10).round(9) % 1 == 0).all()  # accuracy over 10 questions
    assert same["tuned"].tolist() == same["base"].tolist() and (same["difference"] == 0).all()
    changed = run_general_eval(tiny_model_dir, adapters["random"], tmp_path / "random")
    assert changed["base"].tolist() == same["base"].tolist()  # the same base, the same examples
    assert changed["difference"].tolist() == pytest.approx((changed["tuned"] - changed["base"]).tolist())
    assert changed["tuned"].tolist() != changed["base"].tolist()  # the adapter was applied (seeded: acc 0.2 → 0.6)
    raw = (tmp_path / "random" / "lm_eval_tuned.json").read_text()
    assert f'"{TASK}"' in raw and (tmp_path / "random" / "general_eval.md").exists()


def test_problems_accepts_a_merged_model():
    args = GeneralEvalArguments(tasks="arc_easy", output_dir="x", tuned_model_name_or_path="out/merged")
    assert args.problems() == []

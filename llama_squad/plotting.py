"""Pictures of a training run: train and validation loss, perplexity, and the task's scores (``--eval_questions``),
per step."""

import math
import os

from llama_squad.files import atomic_path


def loss_curves(log_history: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """(step, value) series of the training and validation loss found in a Trainer's ``log_history``."""
    curves: dict[str, list[tuple[float, float]]] = {"train": [], "validation": []}
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            curves["train"].append((entry["step"], entry["loss"]))
        if "eval_loss" in entry and "step" in entry:
            curves["validation"].append((entry["step"], entry["eval_loss"]))
    return curves


TASK_TIMING = ("eval_task_seconds", "eval_task_questions_per_s")  # logged with the task's scores (not scores)


def task_curves(log_history: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """(step, value) series of the task's scores that train.py --eval_questions logs (``eval_exact``...), by name."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for entry in log_history:
        if "eval_task_seconds" not in entry or "step" not in entry:
            continue
        for key, value in entry.items():
            if key.startswith("eval_") and key not in TASK_TIMING and isinstance(value, int | float):
                if not math.isnan(value):
                    curves.setdefault(key.removeprefix("eval_"), []).append((entry["step"], value))
    return curves


def plot_losses(log_history: list[dict], path: str | os.PathLike, title: str = "") -> bool:
    """Draw loss (left), perplexity (middle) and, when the run logged them, the task's scores (right) per step to a
    PNG; False when there is nothing to draw."""
    curves = loss_curves(log_history)
    if not any(curves.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    scores = task_curves(log_history)
    fig, axes = plt.subplots(1, 3 if scores else 2, figsize=(16 if scores else 11, 4))
    loss_ax, ppl_ax = axes[0], axes[1]
    if scores:
        for name, points in scores.items():
            steps, values = zip(*points, strict=True)
            axes[2].plot(steps, values, label=name, marker="o")
        axes[2].set(xlabel="optimizer step", ylabel="%", title="task scores (validation questions)")
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize="small")
    for name, points in curves.items():
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        style = {"marker": "o"} if len(points) < 30 else {}
        loss_ax.plot(steps, values, label=name, **style)
        ppl_ax.plot(steps, [math.exp(min(v, 50)) for v in values], label=name, **style)
    loss_ax.set(xlabel="optimizer step", ylabel="loss (answer tokens)", title="loss")
    ppl_ax.set(xlabel="optimizer step", ylabel="perplexity", title="perplexity", yscale="log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")  # 2, 3, 20: not 2x10^0, 3x10^1
    ppl_ax.yaxis.set_major_formatter(plain)
    ppl_ax.yaxis.set_minor_formatter(plain)
    for ax in (loss_ax, ppl_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True

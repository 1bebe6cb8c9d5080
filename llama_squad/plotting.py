"""Pictures of a training run: train and validation loss, and perplexity, per step."""

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


def plot_losses(log_history: list[dict], path: str | os.PathLike, title: str = "") -> bool:
    """Draw loss (left) and perplexity (right) per step to a PNG; False when there is nothing to draw."""
    curves = loss_curves(log_history)
    if not any(curves.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (loss_ax, ppl_ax) = plt.subplots(1, 2, figsize=(11, 4))
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

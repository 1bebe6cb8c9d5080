"""Tables and a chart across runs: one row of metrics per results file."""

import logging
import os
from pathlib import Path

import pandas as pd

from llama_squad.files import InputError, atomic_path
from llama_squad.results import read_results, read_run_record, summarize

logger = logging.getLogger(__name__)


def run_name(path: str | os.PathLike) -> str:
    """A run is named after its folder when the file is the usual ``results.csv`` (after the folder above it when
    that one is ``eval``, as train.py's output folders hold it: ``NAME/eval/results.csv`` is ``NAME``), else after the
    file."""
    return run_names([path])[0]


def _name_parts(path: str | os.PathLike) -> list[str]:
    """The parts of a results path that can name its run, nearest first."""
    path = Path(path).absolute()
    if path.is_dir() or path.name == "results.csv":
        folder = path if path.is_dir() else path.parent
        parts = [folder.name, *(p.name for p in folder.parents if p.name)]
        if len(parts) > 1 and parts[0] == "eval":
            parts = parts[1:]
        return parts
    return [path.stem, *(p.name for p in path.parents if p.name)]


def run_names(paths: list) -> list[str]:
    """The shortest names that tell the runs apart: each run's folder (:func:`run_name`), joined with as many of its
    parent folders as it takes for no two runs to share a name."""
    parts = [_name_parts(path) for path in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(reversed(p[:d])) for p, d in zip(parts, depth, strict=True)]
        clashing = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashing and depth[i] < len(parts[i])]
        if not grow:
            return names
        for i in grow:
            depth[i] += 1


def metrics_table(runs: dict[str, dict]) -> pd.DataFrame:
    """A table of runs (name → {"task": ..., metric: value}), one row each, indexed by run name."""
    table = pd.DataFrame(list(runs.values()), index=pd.Index(list(runs), name="run"))
    return table.dropna(axis=1, how="all")


def run_status(path: str | os.PathLike, results: pd.DataFrame) -> str:
    """ "complete", "partial (answered/asked)" from the run record beside a results file, or "unknown" without one."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    record = read_run_record(folder)
    if record is None or not isinstance(record.get("examples"), int):
        return "unknown"
    answered = results["example_id"].nunique()
    if answered < record["examples"]:
        return f"partial ({answered}/{record['examples']})"
    return "complete"


def constraint_label(results: pd.DataFrame) -> str:
    """The ``--constrain`` mode of a run's rows (modes joined by "+" if rows were made with several)."""
    return "+".join(sorted(results["constrain"].unique())) if "constrain" in results else "none"


def summarize_files(paths: list[str]) -> pd.DataFrame:
    """One row per results file (indexed by run name, with ``task``, ``constrain`` and ``status`` columns), metric
    columns in a fixed order. A run whose results hold fewer questions than its run record asks is marked partial, and
    logged."""
    runs: dict[str, dict] = {}
    for path, name in zip(paths, run_names(paths), strict=True):
        results = read_results(path)
        if results.empty:
            raise InputError(f"{path}: holds no results rows")
        status = run_status(path, results)
        if status.startswith("partial"):
            logger.warning("%s: %s questions answered: the run has not finished; resume it with test.py", path, status)
        runs[name] = {"task": results["task"].iloc[0], "constrain": constraint_label(results), "status": status}
        runs[name].update(summarize(results))
        runs[name].update(calibrated_columns(path, results))
    return metrics_table(runs)


def calibrated_columns(path: str | os.PathLike, results: pd.DataFrame) -> dict:
    """Beside the greedy scores: those under the run's no-answer threshold (recorded in its run.json by test.py
    --no_answer_threshold or --calibrate_on: ``calibrated_*``) and under the best threshold on these very rows
    (``oracle_*``, a ceiling). Absent, not zero, for rows without no-answer probabilities (older results files)."""
    from llama_squad.evaluation import calibration
    from llama_squad.tasks import get_task

    if not calibration.has_probabilities(results):
        return {}
    task = get_task(results["task"].iloc[0])
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    record = read_run_record(folder) or {}
    thresholds = (record.get("calibration") or {}).get("threshold")
    if thresholds is None:
        oracle = calibration.choose_thresholds(task, results)
        return calibration.calibrated_metrics(task, results, oracle, calibration.ORACLE)
    return calibration.summarize_calibration(task, results, thresholds, record["calibration"].get("source"))


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The narrow table: the run's task, constraint and status, then its tasks' headline metrics, and beside each the
    calibrated and oracle ones where the runs have them."""
    from llama_squad.tasks import all_tasks

    keep = [c for c in ("task", "constrain", "status", "total") if c in table.columns]
    for task in all_tasks():
        if task.name not in set(table["task"]):
            continue
        for metric in task.headline_metrics:
            for column in (metric, f"calibrated_{metric}", f"oracle_{metric}"):
                if column in table.columns and column not in keep:
                    keep.append(column)
    return table[keep]


def format_table(table: pd.DataFrame, fmt: str = "markdown") -> str:
    """The table as markdown (numbers to 2 decimals) or CSV."""
    if fmt == "csv":
        return table.to_csv(float_format="%.4f")
    if fmt != "markdown":
        raise ValueError(f"unknown format {fmt!r}: markdown or csv")
    return table.to_markdown(floatfmt=".2f")


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the table atomically: markdown for ``.md``, else CSV."""
    text = format_table(table, "markdown" if str(path).endswith(".md") else "csv")
    with atomic_path(path) as tmp:
        tmp.write_text(text + ("\n" if not text.endswith("\n") else ""), encoding="utf-8")


def plot_summary(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """A grouped bar chart of each run's headline metrics (%), one panel per task, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llama_squad.tasks import all_tasks

    tasks = [t for t in all_tasks() if t.name in set(table["task"])]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 + 1.2 * len(table), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=False):
        runs = table[table["task"] == task.name]
        metrics = [m for m in task.headline_metrics if m in runs.columns]
        bars = runs[metrics].T
        if "status" in runs.columns:  # a partial run says so in the legend: its bars are not final
            bars.columns = [
                n if s in ("complete", "unknown") else f"{n} ({s})"
                for n, s in zip(runs.index, runs["status"], strict=True)
            ]
        bars.plot.bar(ax=ax, rot=0, width=0.8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
        totals = sorted({int(t) for t in runs["total"].dropna()}) if "total" in runs.columns else []
        questions = f", {totals[0]:,} rows" if len(totals) == 1 else ""
        ax.set_title(f"{task.title}: {len(runs)} run{'s' if len(runs) > 1 else ''} compared{questions}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(title="run", fontsize="small")
        for container in ax.containers:
            ax.bar_label(container, fmt="%.1f", fontsize=7, padding=1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)

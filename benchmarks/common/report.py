"""The figures out: quieting the libraries, tables, ratios against the baseline of the same run, JSON."""

import json
import os
import re
from pathlib import Path


def quiet() -> None:
    """Only errors from the libraries: no warnings, info logs or progress bars between the figures."""
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    disable_progress_bar()
    hf_logging.set_verbosity_error()


def print_header(header: str) -> None:
    """A table's header line, and a rule as long under it."""
    print(header)
    print("-" * len(header))


def print_table(columns: list[tuple[str, str]], rows: list[list], indent: str = "", rule: bool = True) -> None:
    """A table: each column a (title, format spec of its values) pair, the title aligned and padded as the values
    (the spec's alignment and width: ``">13,.0f"`` → ``">13"``), a missing value (None) as ``n/a``; a rule under the
    header unless ``rule`` is false."""
    widths = [re.match(r"[<>^]?\d*", spec)[0] for _, spec in columns]
    header = indent + " ".join(format(title, width) for (title, _), width in zip(columns, widths, strict=True))
    print(header)
    if rule:
        print("-" * len(header))
    for values in rows:
        cells = zip(values, columns, widths, strict=True)
        print(indent + " ".join(format("n/a", w) if v is None else format(v, spec) for v, (_, spec), w in cells))


def ratio(run: dict, baseline: dict, key: str) -> float:
    """``run[key]`` over the baseline's, measured in the same run: 2.0 is twice the baseline's."""
    return run[key] / baseline[key]


def identical_outputs(run: dict, baseline: dict) -> int:
    """How many of the baseline's outputs (by question id) ``run`` gave the same."""
    return sum(run["outputs"][qid] == text for qid, text in baseline["outputs"].items())


def without_outputs(runs: dict[str, dict]) -> dict[str, dict]:
    """Each run's figures, without its raw outputs (for the JSON)."""
    return {name: {k: v for k, v in run.items() if k != "outputs"} for name, run in runs.items()}


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def write_json(path: str | Path, payload: dict) -> None:
    """Write the figures to ``path`` (indented JSON; atomically: a crash leaves the previous file, never half of one)
    and say so."""
    partial = Path(f"{path}.partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    print(f"wrote {path}")

"""What the benchmarks share: the shared data's paths here, and in the modules of this package

:mod:`.options` (argument groups several benchmarks take), :mod:`.data` (the questions and the models),
:mod:`.machine` (device, versions, load, peak memory, peak FLOP/s), :mod:`.timing` (timed answering, arms interleaved
chunk by chunk, runs added up), :mod:`.training` (a timed training epoch), :mod:`.report` (tables, ratios against the
baseline of the same run, JSON) and :mod:`.scripts` (scripts in fresh processes: the repository's, and a benchmark's
own arms in N processes).

The benchmarks run as scripts (``python benchmarks/bench_x.py``), so their folder is on ``sys.path`` and they
``import common``; importing it puts this checkout first on ``sys.path``, so that ``llama_squad`` is this one.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
DEV = SHARED / "data" / "squad_v2" / "dev-v2.0.json"
MULTIWOZ21 = SHARED / "data" / "multiwoz21"
TOKENIZERS = SHARED / "tokenizers"
SMOLLM2 = TOKENIZERS / "smollm2-135m-instruct"
TEST_ARTICLES = "25:35"  # the dev-split protocol: articles 25-34 of dev-v2.0.json are the test split


def missing_data(*paths: Path) -> bool:
    """Whether one of ``paths`` (shared data a benchmark reads) is absent, said on stderr; the benchmark then exits
    with 1."""
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        print(
            f"{' and '.join(missing)} not found: this benchmark needs ../shared/data beside the checkout",
            file=sys.stderr,
        )
    return bool(missing)

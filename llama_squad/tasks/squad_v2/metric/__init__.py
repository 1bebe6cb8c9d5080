"""The SQuAD v2 JSON scorer as a Hugging Face ``evaluate`` metric: ``evaluate.load(SQUAD_V2_JSON)``."""

from pathlib import Path

# The folder of the SQuAD v2 JSON metric, for ``evaluate.load`` (works offline: a local script is not downloaded).
SQUAD_V2_JSON = str(Path(__file__).resolve().parent / "squad_v2_json")

"""``evaluate`` metrics backed by the project's scorers, kept at their old import path (``from llama_squad.metrics
import SQUAD_V2_JSON``); each lives with its task."""

from llama_squad.tasks.squad_v2.metric import SQUAD_V2_JSON

__all__ = ["SQUAD_V2_JSON"]

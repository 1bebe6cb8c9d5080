"""The official SQuAD v2 scorer, kept at its old path: ``python -m llama_squad.squad_eval`` (and ``llama-squad-eval``).
It lives in :mod:`llama_squad.tasks.squad_v2.official`."""

import sys

from llama_squad.tasks.squad_v2.official import *  # noqa: F403 (the scorer's public names, as before)
from llama_squad.tasks.squad_v2.official import main

if __name__ == "__main__":
    sys.exit(main())

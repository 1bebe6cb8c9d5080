"""The ``squad_v2_json`` metric folder (``evaluate.load`` reads ``squad_v2_json.py`` from it)."""

"""JSON Schemas of the records the project publishes. `load("manifest")` returns a parsed schema."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files


@cache
def load(name: str) -> dict:
    return json.loads(files(__name__).joinpath(f"{name}.schema.json").read_text())

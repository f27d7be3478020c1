"""Reading the JSON files of checkpoints, pipeline directories and converted weights: every error
is one line naming the file (and, where given, the component it belongs to); and configs and
numpy values as plain JSON."""

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath


def read_json(path: str | os.PathLike, component: str | None = None) -> dict:
    """The JSON object at `path` (local or a URI). A missing file is a FileNotFoundError; a file
    that is not UTF-8 JSON, or holds something other than an object, is a ValueError; both name
    the file."""
    path = epath.Path(path)
    prefix = f"{component}: " if component else ""
    if not path.is_file():
        raise FileNotFoundError(f"{prefix}{path} is missing")
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{prefix}{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{prefix}{path} must hold a JSON object, not a {type(value).__name__}")
    return value


def jsonable(value: Any) -> Any:
    """ConfigDict / mapping / tuple / numpy values as plain JSON types (dicts, lists, scalars)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value

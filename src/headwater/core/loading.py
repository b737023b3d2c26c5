"""User code named in settings: 'path/to/file.py:name' or 'package.module:name' (processors, enrichments)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


def load_named(spec: str, what: str, error: type[Exception]) -> Any:
    """The object `spec` names; `error(message)` when it cannot be had (`what` starts each message)."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise error(f"{what} {spec!r}: expected 'path/to/file.py:name' or 'package.module:name'")
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise error(f"{what} {spec!r}: {path} does not exist")
            module_name = f"headwater_user_{path.stem}_{abs(hash(str(path)))}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            if module_spec is None or module_spec.loader is None:
                raise error(f"{what} {spec!r}: cannot import {path}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except error:
        raise
    except Exception as exc:  # the user's module failed to import: say which and why
        raise error(f"{what} {spec!r}: import failed: {type(exc).__name__}: {exc}") from exc
    found = getattr(module, attr, None)
    if found is None:
        raise error(f"{what} {spec!r}: {target} has no {attr!r}")
    return found

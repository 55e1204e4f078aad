"""Backend defaults from ``corral.toml`` (or ``[tool.corral]`` in ``pyproject.toml``).

A platform engineer writes them once; researchers never see sbatch flags::

    # corral.toml
    [slurm]
    partition = "gpu"
    account = "ml-team"
    python = "/shared/envs/torch/bin/python"

The nearest ``corral.toml`` or ``pyproject.toml`` with ``[tool.corral]`` from the working
directory upwards wins; ``$CORRAL_CONFIG`` names a file explicitly. ``-o KEY=VALUE`` on the
command line overrides any of these.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from corral.errors import JobFileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]


def find_config(start: Path | None = None) -> Path | None:
    explicit = os.environ.get("CORRAL_CONFIG")
    if explicit:
        return Path(explicit)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "corral.toml").is_file():
            return folder / "corral.toml"
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.corral" in pyproject.read_text(errors="replace"):
            return pyproject
    return None


def load_config(path: Path | None = None) -> dict[str, Any]:
    """Every table of the config file (``{}`` when there is none)."""
    path = path or find_config()
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise JobFileError(f"corral config {str(path)!r} cannot be read: {exc}") from exc
    if path.name == "pyproject.toml":
        data = data.get("tool", {}).get("corral", {})
    tables: dict[str, Any] = data
    return tables


def backend_defaults(backend: str, path: Path | None = None) -> dict[str, Any]:
    """The ``[<backend>]`` table: default options for that backend."""
    table = load_config(path).get(backend, {})
    if not isinstance(table, dict):
        raise JobFileError(f"corral config: [{backend}] must be a table of options")
    return dict(table)

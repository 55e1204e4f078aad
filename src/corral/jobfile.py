"""Job files: the same spec in YAML or TOML.

    name: mingpt
    script: examples/mingpt/train.py    # or  module: pkg.train  or  command: "echo hi"
    args: ["--steps", "200"]
    nodes: 2
    procs_per_node: 1
    launcher: torchrun
    env: {LOG_LEVEL: info}
    resources: {cpus: 4, memory: 8G, gpus: 0}
    time_limit: 30m
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from corral.errors import JobFileError, SpecError
from corral.spec import JobSpec

_ENTRY_KEYS = ("script", "module", "command")


def entrypoint_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Turn the ``script:`` / ``module:`` / ``command:`` shorthand into ``entrypoint``."""
    data = dict(data)
    given = [k for k in _ENTRY_KEYS if k in data]
    if len(given) > 1 or (given and "entrypoint" in data):
        raise SpecError([("entrypoint", {k: data[k] for k in given},
                          "give exactly one of script, module, command")])
    if not given:
        return data
    key = given[0]
    value = data.pop(key)
    if key == "script":
        data["entrypoint"] = {"kind": "script", "path": value}
    elif key == "module":
        data["entrypoint"] = {"kind": "module", "module": value}
    else:
        argv = shlex.split(value) if isinstance(value, str) else value
        data["entrypoint"] = {"kind": "command", "argv": argv}
    return data


def read_job_file(path: str | Path) -> dict[str, Any]:
    """The raw fields of a YAML (.yaml/.yml) or TOML (.toml) job file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobFileError(f"cannot read job file {str(path)!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise JobFileError(f"job file {str(path)!r} is not UTF-8 text (byte {exc.start}); "
                           "give a YAML, TOML or JSON file") from None
    try:
        if path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml", ".json"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise JobFileError(
                f"job file {str(path)!r}: unknown extension {path.suffix!r}; "
                "use .yaml, .yml, .toml or .json"
            )
    except JobFileError:
        raise
    except Exception as exc:
        raise JobFileError(f"job file {str(path)!r} is not valid {path.suffix[1:]}: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise JobFileError(f"job file {str(path)!r}: expected a mapping of fields at the top")
    return _relative_to(entrypoint_fields(_env_as_text(data)), path.resolve().parent)


def _env_as_text(data: dict[str, Any]) -> dict[str, Any]:
    """``env: {SEED: 3, DEBUG: true}``: numbers and booleans are the text a shell would see."""
    env = data.get("env")
    if not isinstance(env, dict):
        return data
    def text(value: Any) -> Any:
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value) if isinstance(value, int | float) else value
    return {**data, "env": {key: text(value) for key, value in env.items()}}


def _relative_to(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Relative paths in a job file (workdir, and a script when no workdir is given) are
    relative to the file's own folder, wherever corral is started from."""
    data = dict(data)
    workdir = data.get("workdir")
    if isinstance(workdir, str) and not Path(workdir).is_absolute():
        data["workdir"] = str(folder / workdir)
    entry = data.get("entrypoint")
    if (workdir is None and isinstance(entry, dict) and entry.get("kind") == "script"
            and isinstance(entry.get("path"), str) and not Path(entry["path"]).is_absolute()):
        data["entrypoint"] = {**entry, "path": str(folder / entry["path"])}
    return data


def load_job_file(path: str | Path, **overrides: Any) -> JobSpec:
    """A validated spec from a job file, with ``overrides`` applied on top."""
    data = read_job_file(path)
    data.update(entrypoint_fields(overrides))
    return JobSpec(**data)

"""Which heavy modules a rank will import, so a node can import them once and fork.

Only modules known to be slow to import and to read no per-rank state at import time are
preloaded; anything else is left to the rank. ``JobSpec.preload`` overrides the guess
(``preload=[]`` turns forking off for a job).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from corral.spec import Function, JobSpec, Module, Script

# Slow to import, single-threaded after import, no per-rank state read at import time.
PRELOADABLE = ("torch", "numpy", "scipy", "pandas")


def imported_roots(source: str) -> set[str]:
    """Top-level package names a module surely imports when it runs: statements at module
    level, and in ``try`` blocks there; not inside functions, classes or an ``if`` (which
    may never run: ``if TYPE_CHECKING``, a command-line switch), where preloading would
    cost a rank that does not need it."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    roots: set[str] = set()
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Try):
            stack.extend(node.body)
            stack.extend(node.orelse)
            for handler in node.handlers:
                stack.extend(handler.body)
    return roots


def program_source(spec: JobSpec, workdir: str) -> str | None:
    """The text of the script or module a job runs (None for a command or a function)."""
    entry = spec.entrypoint
    path: str | None = None
    if isinstance(entry, Script):
        path = str(Path(workdir, entry.path))
    elif isinstance(entry, Module):
        try:
            found = importlib.util.find_spec(entry.module)
        except (ImportError, ValueError):
            return None
        path = found.origin if found else None
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def guess_preload(spec: JobSpec, workdir: str) -> tuple[str, ...]:
    if spec.preload is not None:
        return spec.preload
    if isinstance(spec.entrypoint, Function):
        return ()  # unpickling the function imports what it uses
    source = program_source(spec, workdir)
    if source is None:
        return ()
    roots = imported_roots(source)
    return tuple(
        name for name in PRELOADABLE
        if name in roots and importlib.util.find_spec(name) is not None
    )

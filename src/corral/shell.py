"""Shell text that is safe for any value, with room for run-time references.

A *reference* stands for a variable that only the node running a command knows (its
node rank, the first host of an allocation). References are built with NUL bytes, which
no spec value can contain, so user input can never turn into one.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

_REF = re.compile("\x00([A-Za-z_][A-Za-z0-9_]*)\x00")


def ref(variable: str) -> str:
    """A placeholder for ``${variable}``, expanded by the shell that runs the command."""
    return f"\x00{variable}\x00"


def quote(word: str) -> str:
    """One shell word: literal text single-quoted, references as ``"${VAR}"``."""
    parts = _REF.split(word)
    if len(parts) == 1:
        return shlex.quote(word)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append('"${' + part + '}"')
        elif part:
            out.append(shlex.quote(part))
    return "".join(out)


def join(words: Iterable[str]) -> str:
    return " ".join(quote(w) for w in words)


def has_ref(word: str) -> bool:
    return _REF.search(word) is not None

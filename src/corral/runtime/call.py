"""Run a pickled function on one rank and store what it returned or raised.

``python -m corral.runtime.call RUN_DIR/function.pkl`` (or, in a forked rank, the
already-loaded function). The result of rank R goes to ``RUN_DIR/results/rank-R.pkl``: an
envelope of plain types (plain pickle) that any Python can read, holding the value or the
exception as cloudpickle bytes, so that a caller who cannot unpickle them still learns the
rank, the type and the remote traceback::

    {"version": 1, "ok": bool, "type": "module.Qualname", "traceback": str,
     "payload": bytes | None}
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any


def dump_payload(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The caller's sys.path (plain pickle), then the call (cloudpickle)."""
    import pickle

    import cloudpickle

    call: bytes = cloudpickle.dumps((fn, args, kwargs))
    return pickle.dumps(list(sys.path)) + call


def load_payload(path: str) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """Load a call; the caller's sys.path comes first, so that functions and classes that
    were pickled by reference (defined in the caller's own modules) import here too."""
    import pickle

    import cloudpickle

    with open(path, "rb") as handle:
        caller_path = pickle.load(handle)
        sys.path.extend(p for p in caller_path if p not in sys.path)
        fn, args, kwargs = cloudpickle.load(handle)
    return fn, tuple(args), dict(kwargs)


def result_path(payload_path: str, rank: int) -> str:
    return os.path.join(os.path.dirname(payload_path), "results", f"rank-{rank}.pkl")


RESULT_VERSION = 1


def _type_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _write_result(path: str, ok: bool, value: Any, text: str = "") -> None:
    import pickle

    import cloudpickle

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    payload: bytes | None
    try:
        payload = cloudpickle.dumps(value)
    except Exception as exc:  # the value or the exception cannot be pickled
        what = "return value" if ok else "exception"
        text += f"\ncorral: the {what} of this rank could not be pickled: {exc!r}\n"
        ok, payload = False, None
    envelope = {"version": RESULT_VERSION, "ok": ok, "type": _type_name(value),
                "traceback": text, "payload": payload}
    with open(tmp, "wb") as handle:
        pickle.dump(envelope, handle)
    os.replace(tmp, path)


def run_loaded(function: tuple[Any, tuple[Any, ...], dict[str, Any]], payload_path: str) -> int:
    """Call the function; store its outcome for this rank; return the exit code."""
    fn, args, kwargs = function
    rank = int(os.environ.get("RANK", "0"))
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:
        text = traceback.format_exc()
        sys.stderr.write(text)
        _write_result(result_path(payload_path, rank), False, exc, text)
        return 1
    _write_result(result_path(payload_path, rank), True, value)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    payload = args[0]
    return run_loaded(load_payload(payload), payload)


if __name__ == "__main__":
    sys.exit(main())

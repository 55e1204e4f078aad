"""Backend defaults from ``corral.toml`` (or ``[tool.corral]`` in ``pyproject.toml``).

A platform engineer writes them once; researchers never see sbatch flags::

    # corral.toml
    [slurm]
    partition = "gpu"
    account = "ml-team"
    python = "/shared/envs/torch/bin/python"

Which file applies:

* ``$CORRAL_CONFIG`` names a file explicitly; if it does not exist, that is an error.
* Otherwise corral looks in the working directory, then in each folder above it, for
  ``corral.toml`` or a ``pyproject.toml`` with a ``[tool.corral]`` table; the nearest
  wins, and ``corral.toml`` wins over ``pyproject.toml`` in the same folder.
* The search stops at the first of: the root of the git work tree (a folder holding
  ``.git``, a directory or a file), ``$HOME``, or the edge of the filesystem the search
  started on. The stopping folder's own file counts; nothing above it is read, so a
  file in a shared parent folder never changes your jobs.

A config file must be a regular UTF-8 TOML file, owned by you or by root, and not
writable by group or others (``chmod go-w FILE``): whoever can edit it decides what
your jobs run. Every table in it must be a table of options for one backend.
Anything else is a :class:`~corral.errors.JobFileError` that names the file.

``-o KEY=VALUE`` on the command line overrides any of these.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

from corral.errors import JobFileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

CONFIG_NAME = "corral.toml"
PYPROJECT_NAME = "pyproject.toml"


def find_config(start: Path | None = None) -> Path | None:
    """The config file that applies from ``start`` (the working directory), or None."""
    explicit = os.environ.get("CORRAL_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise JobFileError(
                f"CORRAL_CONFIG names {str(path)!r}, which does not exist"
                f"{' (a symlink to a missing file)' if path.is_symlink() else ''}; "
                "create that file, point CORRAL_CONFIG at an existing one, or unset it "
                f"to look for {CONFIG_NAME} from the working directory up")
        return path
    try:
        here = (start or Path.cwd()).resolve()
        start_device = _device(here)
    except OSError as exc:
        raise JobFileError(
            f"cannot look for {CONFIG_NAME}: the folder {str(start or '.')!r} cannot be read "
            f"({exc.strerror or exc}); run corral from an existing folder, or set "
            "CORRAL_CONFIG to the config file") from exc
    stops = _stop_folders()
    for folder in (here, *here.parents):
        try:
            if _device(folder) != start_device:
                return None  # another filesystem: not part of this project
        except OSError:
            return None
        found = _config_in(folder)
        if found is not None:
            return found
        if folder in stops or os.path.lexists(folder / ".git"):
            return None
    return None


def load_config(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every table of the config file (``{}`` when there is none), checked."""
    path = path or find_config()
    if path is None:
        return {}
    raw = _read_trusted(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobFileError(
            f"corral config {str(path)!r} is not UTF-8 text (byte {raw[exc.start]:#04x} at "
            f"offset {exc.start}); a TOML file must be UTF-8: save it as UTF-8 text, or point "
            "CORRAL_CONFIG elsewhere if this is not a config file") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError(
            f"corral config {str(path)!r} is not valid TOML: {exc}; fix the syntax there "
            "(see https://toml.io)") from exc
    where = ""
    if path.name == PYPROJECT_NAME:
        tool = data.get("tool", {})
        if not isinstance(tool, dict):
            raise JobFileError(
                f"corral config {str(path)!r}: 'tool' must be a table, got {_kind(tool)}; "
                "write corral's settings as [tool.corral.<backend>] tables")
        data = tool.get("corral", {})
        if not isinstance(data, dict):
            raise JobFileError(
                f"corral config {str(path)!r}: [tool.corral] must be a table of backend "
                f"tables, got {_kind(data)}; write e.g. [tool.corral.slurm] with "
                "partition = \"gpu\" under it")
        where = "tool.corral."
    tables: dict[str, dict[str, Any]] = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise JobFileError(
                f"corral config {str(path)!r}: [{where}{name}] must be a table of options for "
                f"the {name!r} backend, got {_kind(table)}; write it as a [{where}{name}] "
                "header with KEY = VALUE lines under it")
        tables[name] = table
    return tables


def backend_defaults(backend: str, path: Path | None = None) -> dict[str, Any]:
    """The ``[<backend>]`` table: default options for that backend."""
    return dict(load_config(path).get(backend, {}))


def _device(folder: Path) -> int:
    """The filesystem a folder lives on (a seam for tests)."""
    return os.stat(folder).st_dev


def _stop_folders() -> set[Path]:
    home = os.environ.get("HOME")
    if not home:
        return set()
    try:
        return {Path(home).resolve()}
    except (OSError, RuntimeError):
        return {Path(home)}


def _config_in(folder: Path) -> Path | None:
    """``folder``'s config file, if it has one.

    Any entry named ``corral.toml`` claims the folder, even a directory or a broken
    symlink, so that :func:`load_config` reports it instead of a farther file silently
    applying. A ``pyproject.toml`` counts when it has a ``tool.corral`` entry, or when it
    mentions corral and cannot be read or parsed (load_config then says why).
    """
    candidate = folder / CONFIG_NAME
    if os.path.lexists(candidate):
        return candidate
    pyproject = folder / PYPROJECT_NAME
    try:
        if not stat.S_ISREG(os.stat(pyproject).st_mode):
            return None
        raw = pyproject.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return pyproject  # cannot tell; load_config reports the read error
    if b"corral" not in raw:
        return None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return pyproject
    tool = data.get("tool")
    return pyproject if isinstance(tool, dict) and "corral" in tool else None


def _read_trusted(path: Path) -> bytes:
    """The bytes of a config file that is a regular file only its owner (you or root) writes."""
    try:
        # O_NONBLOCK: a FIFO named corral.toml must not hang corral; fstat checks the
        # very file that is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        broken = " (a symlink to a missing file)" if path.is_symlink() else ""
        raise JobFileError(
            f"corral config {str(path)!r} does not exist{broken}; create it, or remove the "
            "name and unset CORRAL_CONFIG") from exc
    except OSError as exc:
        raise JobFileError(
            f"corral config {str(path)!r} cannot be opened: {exc.strerror or exc}; make it a "
            "readable file (check its permissions and symlinks) or remove it") from exc
    try:
        info = os.fstat(fd)
        _check_trusted(path, info)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    except OSError as exc:
        raise JobFileError(
            f"corral config {str(path)!r} cannot be read: {exc.strerror or exc}; make it a "
            "readable file or remove it") from exc
    finally:
        os.close(fd)


def _check_trusted(path: Path, info: os.stat_result) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise JobFileError(
            f"corral config {str(path)!r} is a directory, not a file; corral reads its "
            f"settings from a TOML file of that name: rename or remove the directory")
    if not stat.S_ISREG(info.st_mode):
        raise JobFileError(
            f"corral config {str(path)!r} is not a regular file (it is a "
            f"{_file_type(info.st_mode)}); make it a plain TOML file or remove it")
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        raise JobFileError(
            f"corral config {str(path)!r} is owned by {_user(info.st_uid)}, not by you "
            f"({_user(me)}) or root, so someone else decides how your jobs run; corral "
            f"refuses it. Fix: copy it to a file you own, or have it owned by you or root "
            f"(chown {me} {path})")
    loose = info.st_mode & 0o022
    if loose:
        who = " and ".join(w for bit, w in ((0o020, "group"), (0o002, "others")) if loose & bit)
        raise JobFileError(
            f"corral config {str(path)!r} is writable by {who} (mode "
            f"{stat.S_IMODE(info.st_mode):04o}), so other users could change how your jobs "
            f"run; corral refuses it. Fix: chmod go-w {path}")


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def _kind(value: object) -> str:
    shown = repr(value)
    return f"a {type(value).__name__} ({shown if len(shown) <= 60 else shown[:57] + '...'})"

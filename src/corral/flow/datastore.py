"""The artifact store of corral.flow: every attribute a step assigns, pickled once by content.

The store lives under one fsspec URL (an absolute path, ``file:///abs/path``, ``s3://bucket/
prefix``...); corral's default is ``file://$CORRAL_HOME/flows`` (:func:`default_url`)::

    data/ab/ab12...ef                      a blob: one pickled value, named by its sha256
    FLOW/RUN_ID/STEP/TASK_ID/artifacts.json  a task's index: artifact name -> blob reference

A blob is written once: the same pickled bytes from any task, run or flow are stored once,
and a resumed run reuses an old task by writing an index that points at the old blobs. The
index is written last and in one piece (a rename on a local disk, one PUT on S3), so a task
that crashed leaves none: for the store, a task has finished exactly when its index exists.

Errors (all :class:`corral.errors.CorralError`)::

    ArtifactError         an artifact cannot be pickled, written, found or loaded
     └── ArtifactNotFound  a finished task has no artifact of that name (also a KeyError
                           for ``artifacts[name]`` and an AttributeError for ``view.name``)

fsspec (and the filesystem's own package, e.g. s3fs) is imported on first use only.
"""

from __future__ import annotations

import hashlib
import json
import keyword
import os
import pickle
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from corral.errors import CorralError, MissingDependency

INDEX_VERSION = 1
INDEX_NAME = "artifacts.json"
PICKLE = "pickle"
CLOUDPICKLE = "cloudpickle"
ENCODINGS = (PICKLE, CLOUDPICKLE)
PROTOCOL = 5

_SHA = re.compile(r"[0-9a-f]{64}")
_KEY_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


class ArtifactError(CorralError):
    """An artifact cannot be pickled, written, found or loaded (which one, where, the fix)."""


class ArtifactNotFound(ArtifactError, KeyError, AttributeError):
    """A finished task has no artifact of that name."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else "no such artifact"


def default_url() -> str:
    """corral's own store: ``file://$CORRAL_HOME/flows``."""
    from corral.store import corral_home

    return (corral_home().absolute() / "flows").as_uri()


@dataclass(frozen=True)
class TaskKey:
    """One task of one run: where its index lives (``flow/run_id/step/task_id``)."""

    flow: str
    run_id: str
    step: str
    task_id: str

    def __post_init__(self) -> None:
        for field in ("flow", "run_id", "step", "task_id"):
            value = getattr(self, field)
            if not isinstance(value, str) or not _KEY_PART.fullmatch(value):
                raise ArtifactError(
                    f"task key: {field} {value!r} cannot name a folder in the artifact store; "
                    "use 1-200 letters, digits, '_', '-' or '.', not starting with '.' or '-'")

    @property
    def path(self) -> str:
        return f"{self.flow}/{self.run_id}/{self.step}/{self.task_id}"


@dataclass(frozen=True)
class ArtifactRef:
    """A stored value: the sha256 and size of its pickled bytes, and the pickler used."""

    sha: str
    size: int
    encoding: str

    def __post_init__(self) -> None:
        if not isinstance(self.sha, str) or not _SHA.fullmatch(self.sha):
            raise ArtifactError(f"artifact reference: sha {self.sha!r} is not a sha256 "
                                "(64 lowercase hex digits)")
        if type(self.size) is not int or self.size < 0:
            raise ArtifactError(f"artifact reference: size {self.size!r} is not a byte count")
        if self.encoding not in ENCODINGS:
            raise ArtifactError(f"artifact reference: encoding {self.encoding!r} is not one "
                                f"of {', '.join(ENCODINGS)} (written by a newer corral? "
                                "upgrade corral)")

    def to_json(self) -> dict[str, Any]:
        return {"sha": self.sha, "size": self.size, "encoding": self.encoding}

    @classmethod
    def from_json(cls, data: Any) -> ArtifactRef:
        if not isinstance(data, dict) or set(data) != {"sha", "size", "encoding"}:
            raise ArtifactError(f"not an artifact reference: {data!r} (expected an object with "
                                "exactly sha, size and encoding)")
        return cls(sha=data["sha"], size=data["size"], encoding=data["encoding"])


def check_name(name: object) -> str | None:
    """Why ``name`` cannot name an artifact, or None when it can."""
    if not isinstance(name, str):
        return f"{name!r} is a {type(name).__name__}, not a str"
    if not name.isidentifier() or keyword.iskeyword(name):
        return f"{name!r} is not a Python identifier"
    if name.startswith("_"):
        return f"{name!r} starts with '_' (private attributes are not artifacts)"
    return None


def _type_name(value: object) -> str:
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _dump(value: object, what: str) -> tuple[bytes, str]:
    """(the pickled bytes, the encoding): pickle first; cloudpickle for what pickle cannot
    do (lambdas, local classes), and for what pickle would only name but another process
    could not import: anything from ``__main__`` or from a module registered with
    ``cloudpickle.register_pickle_by_value`` (a flow file imported under its own name)."""
    try:
        import cloudpickle
    except ImportError as exc:
        raise MissingDependency("cloudpickle", purpose=f"to save {what}") from exc
    by_value = {"__main__", *cloudpickle.list_registry_pickle_by_value()}
    try:
        data = pickle.dumps(value, protocol=PROTOCOL)
        if not any(module.encode() in data for module in by_value):
            return data, PICKLE
    except Exception:  # anything a __reduce__ may raise: try cloudpickle, report its error
        pass
    try:
        return cloudpickle.dumps(value, protocol=PROTOCOL), CLOUDPICKLE
    except Exception as exc:
        raise ArtifactError(
            f"{what} (a {_type_name(value)}) cannot be pickled: {type(exc).__name__}: {exc}; "
            "keep only data in a step's attributes: create locks, clients, open files and "
            "connections inside the step, give them a name starting with '_' (not saved), or "
            "save what recreates them (a path, a config)") from exc


class TaskArtifacts(Mapping[str, Any]):
    """A finished task's artifacts, read-only; each is loaded on first access, then cached.

    ``artifacts["loss"]`` or ``artifacts.data.loss``; ``names()``, ``ref(name)``.
    """

    def __init__(self, store: ArtifactStore, key: TaskKey,
                 refs: Mapping[str, ArtifactRef]) -> None:
        self.key = key
        self._store = store
        self._refs = dict(sorted(refs.items()))
        self._values: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name in self._values:
            return self._values[name]
        value = self._store._load(self.ref(name), f"artifact {name!r} of task {self.key.path}")
        self._values[name] = value
        return value

    def __contains__(self, name: object) -> bool:  # Mapping's would load the value
        return name in self._refs

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"<TaskArtifacts {self.key.path}: {', '.join(self._refs) or 'none'}>"

    def names(self) -> list[str]:
        return list(self._refs)

    def ref(self, name: str) -> ArtifactRef:
        try:
            return self._refs[name]
        except (KeyError, TypeError):
            have = ", ".join(self._refs) or "none"
            raise ArtifactNotFound(f"task {self.key.path} has no artifact {name!r}; it has: "
                                   f"{have}") from None

    def is_loaded(self, name: str) -> bool:
        return name in self._values

    @property
    def data(self) -> ArtifactView:
        return ArtifactView(self)


class ArtifactView:
    """Attribute access to a task's artifacts: ``view.loss`` is ``artifacts["loss"]``."""

    __slots__ = ("_artifacts",)
    _artifacts: TaskArtifacts

    def __init__(self, artifacts: TaskArtifacts) -> None:
        object.__setattr__(self, "_artifacts", artifacts)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # dunders probed by copy, pickle, IPython: never artifacts
            raise AttributeError(name)
        return self._artifacts[name]

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"artifacts are read-only: cannot set {name!r}")

    def __dir__(self) -> list[str]:
        return self._artifacts.names()

    def __repr__(self) -> str:
        return f"<ArtifactView {self._artifacts.key.path}: {', '.join(self._artifacts) or 'none'}>"


class ArtifactStore:
    """Content-addressed artifact blobs plus one index per finished task, under ``url``."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self._fs: Any = None
        self._root = ""
        self._local = False

    def __repr__(self) -> str:  # not the storage options: they may hold secrets
        return f"ArtifactStore({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:  # sent to workers: they open their own
        return {**self.__dict__, "_fs": None}

    # -- blobs -------------------------------------------------------------------------

    def put(self, value: object) -> ArtifactRef:
        """Pickle ``value`` and store it once by content; its reference."""
        return self._put(value, "the value")

    def get(self, ref: ArtifactRef) -> Any:
        """The value stored under ``ref``."""
        return self._load(ref, f"the value {ref.sha[:12]}")

    # -- task indexes ------------------------------------------------------------------

    def save_task(self, key: TaskKey, artifacts: Mapping[str, Any], *,
                  inherited: Mapping[str, ArtifactRef] | None = None) -> dict[str, ArtifactRef]:
        """Store each artifact, then the task's index (last: a crash leaves no index).

        ``inherited``: artifacts already stored (a parent task's refs, not re-pickled) that
        the index also lists; a name in ``artifacts`` wins over the same inherited name.
        """
        bad = [why for why in map(check_name, artifacts) if why]
        if bad:
            raise ArtifactError(
                f"task {key.path}: bad artifact name(s): {'; '.join(bad)}; an artifact is a "
                "step attribute, so its name must be a Python identifier not starting with '_'")
        refs = {name: ref for name, ref in (inherited or {}).items() if name not in artifacts}
        not_refs = [name for name, ref in refs.items() if not isinstance(ref, ArtifactRef)]
        if not_refs:
            raise ArtifactError(f"task {key.path}: inherited {', '.join(not_refs)} must be "
                                "ArtifactRefs (from TaskArtifacts.ref), not values")
        for name, value in artifacts.items():
            refs[name] = self._put(value, f"artifact {name!r} of task {key.path}")
        self._write_index(key, refs)
        return refs

    def load_task(self, key: TaskKey) -> TaskArtifacts:
        """A finished task's artifacts (loaded lazily)."""
        return TaskArtifacts(self, key, self._read_index(key))

    def has_task(self, key: TaskKey) -> bool:
        """Whether the task finished (its index exists)."""
        fs = self._filesystem()
        path = self._index_path(key)
        try:
            return bool(fs.exists(path))
        except Exception as exc:
            raise self._io_error("look for the artifact index", path, exc) from exc

    def copy_task(self, src: TaskKey, dst: TaskKey) -> dict[str, ArtifactRef]:
        """Make ``dst`` a finished task with ``src``'s artifacts (for resume): a new index
        pointing at the same blobs, which are checked, not copied. The task's records
        (:meth:`write_meta`) are copied first, the index last."""
        refs = self._read_index(src)
        lost = [name for name, ref in refs.items()
                if not self._stored(self._blob_path(ref.sha), ref.size)]
        if lost:
            raise ArtifactError(
                f"cannot reuse task {src.path} as {dst.path}: the data of its artifact(s) "
                f"{', '.join(lost)} is missing or damaged in {self.url}; rerun that step "
                "instead of resuming past it")
        for name in self._meta_names(src):
            path = self._meta_path(dst, name)
            try:
                self._write(path, self._fs.cat_file(self._meta_path(src, name)))
            except Exception as exc:
                raise self._io_error(f"copy the {name!r} record of task {src.path}", path,
                                     exc) from exc
        self._write_index(dst, refs)
        return refs

    def write_meta(self, key: TaskKey, name: str, meta: Mapping[str, Any]) -> None:
        """A small JSON document about the task, ``{key.path}/{name}.json`` (e.g. where
        the flow goes next). Written whole, like the index; not an artifact."""
        path = self._meta_path(key, name)
        try:
            data = json.dumps(dict(meta), indent=1, sort_keys=True).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"task {key.path}: the {name!r} record is not JSON: {exc}; "
                                "keep it to str, int, float, bool, None, lists and dicts "
                                "with str keys") from exc
        try:
            self._write(path, data)
        except Exception as exc:
            raise self._io_error(f"write the {name!r} record of task {key.path}", path,
                                 exc) from exc

    def read_meta(self, key: TaskKey, name: str) -> dict[str, Any]:
        """What :meth:`write_meta` wrote."""
        path = self._meta_path(key, name)
        try:
            raw = self._fs.cat_file(path)
        except FileNotFoundError:
            raise ArtifactError(f"task {key.path} has no {name!r} record in {self.url} (it "
                                "did not finish); run or resume it") from None
        except Exception as exc:
            raise self._io_error(f"read the {name!r} record of task {key.path}", path,
                                 exc) from exc
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise ArtifactError(f"the {name!r} record of task {key.path} "
                                f"({self._where(path)}) is not JSON: {exc}; delete it and "
                                "rerun the task") from None
        if not isinstance(document, dict):
            raise ArtifactError(f"the {name!r} record of task {key.path} "
                                f"({self._where(path)}) is not a JSON object; delete it and "
                                "rerun the task")
        return document

    # -- internals ---------------------------------------------------------------------

    def _filesystem(self) -> Any:
        if self._fs is not None:
            return self._fs
        try:
            import fsspec
            from fsspec.implementations.local import LocalFileSystem
        except ImportError as exc:
            raise MissingDependency("fsspec", purpose="for the flow artifact store") from exc
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        except ImportError as exc:  # the filesystem's own package: s3fs, gcsfs, adlfs...
            protocol = fsspec.core.split_protocol(self.url)[0] or "file"
            impl = fsspec.registry.known_implementations.get(protocol, {}).get("class", "")
            module = impl.split(".")[0] if impl else str(exc)
            raise MissingDependency(module, purpose=f"for the artifact store {self.url}") from exc
        except Exception as exc:
            raise ArtifactError(
                f"cannot open the artifact store {self.url!r}: {type(exc).__name__}: {exc}; "
                "use an absolute path, file:///ABS/PATH or s3://BUCKET/PREFIX (with the "
                "filesystem's options in storage_options)") from exc
        self._root = str(root).rstrip("/")
        self._local = isinstance(fs, LocalFileSystem)
        self._fs = fs
        return fs

    def _blob_path(self, sha: str) -> str:
        return f"{self._root}/data/{sha[:2]}/{sha}"

    def _index_path(self, key: TaskKey) -> str:
        self._filesystem()
        return f"{self._root}/{key.path}/{INDEX_NAME}"

    def _meta_path(self, key: TaskKey, name: str) -> str:
        if not isinstance(name, str) or not _KEY_PART.fullmatch(name) or name == "artifacts":
            raise ArtifactError(f"task {key.path}: {name!r} cannot name a record; use "
                                "letters, digits, '_', '-' or '.' (and not 'artifacts')")
        self._filesystem()
        return f"{self._root}/{key.path}/{name}.json"

    def _where(self, path: str) -> str:
        return path if self._local else str(self._fs.unstrip_protocol(path))

    def _io_error(self, doing: str, path: str, exc: BaseException) -> ArtifactError:
        return ArtifactError(f"cannot {doing} at {self._where(path)}: {type(exc).__name__}: "
                             f"{exc}; check that the artifact store {self.url} is reachable "
                             "and writable with these credentials")

    def _meta_names(self, key: TaskKey) -> list[str]:
        """The names of the task's records (``NAME.json`` beside its index)."""
        fs = self._filesystem()
        folder = f"{self._root}/{key.path}"
        try:
            fs.invalidate_cache(folder)  # S3: other processes wrote since we last listed
            entries = fs.ls(folder, detail=False)
            fs.invalidate_cache(folder)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._io_error(f"list the records of task {key.path}", folder, exc) from exc
        names = [str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries]
        return sorted(name[:-5] for name in names if name.endswith(".json")
                      and name != INDEX_NAME and _KEY_PART.fullmatch(name[:-5]))

    def _stored(self, path: str, size: int, what: str = "a blob") -> bool:
        """Whether a complete blob is there (the size catches one cut short)."""
        try:
            return bool(self._fs.size(path) == size)
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise self._io_error(f"look for {what}", path, exc) from exc

    def _write(self, path: str, data: bytes) -> None:
        """One object in one piece: a temporary name, then a rename, on a local disk (a
        reader never sees half a file); a plain write elsewhere (an S3 PUT is atomic)."""
        fs = self._fs
        if not self._local:
            fs.pipe_file(path, data)
            return
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with fs.open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            fs.mv(temporary, path)
        except BaseException:
            try:
                fs.rm_file(temporary)
            except OSError:
                pass
            raise

    def _put(self, value: object, what: str) -> ArtifactRef:
        data, encoding = _dump(value, what)
        ref = ArtifactRef(hashlib.sha256(data).hexdigest(), len(data), encoding)
        self._filesystem()
        path = self._blob_path(ref.sha)
        if not self._stored(path, ref.size, what):
            try:
                self._write(path, data)
            except Exception as exc:
                raise self._io_error(f"write {what}", path, exc) from exc
        return ref

    def _load(self, ref: ArtifactRef, what: str) -> Any:
        fs = self._filesystem()
        path = self._blob_path(ref.sha)
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise ArtifactError(
                f"{what}: its data {self._where(path)} is missing (deleted, or the store URL "
                f"differs from the one the task wrote to: this is {self.url}); rerun the step "
                "that made it") from None
        except Exception as exc:
            raise self._io_error(f"read {what}", path, exc) from exc
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha:
            raise ArtifactError(
                f"{what}: its data {self._where(path)} is corrupt ({len(data)} bytes, expected "
                f"{ref.size} with sha256 {ref.sha}); delete that file and rerun the step that "
                "made it")
        try:
            if ref.encoding == CLOUDPICKLE:
                import cloudpickle  # noqa: F401  (its pickles call into it while loading)
            return pickle.loads(data)
        except ImportError as exc:
            raise ArtifactError(
                f"{what} cannot be loaded here: {exc}; install the package it needs, or load "
                "it where the step ran (same code and packages)") from exc
        except Exception as exc:
            raise ArtifactError(
                f"{what} cannot be unpickled here: {type(exc).__name__}: {exc}; make the "
                "module that defines its type importable in this process (same code and "
                "packages as the step that saved it)") from exc

    def _write_index(self, key: TaskKey, refs: Mapping[str, ArtifactRef]) -> None:
        self._filesystem()
        path = self._index_path(key)
        document = {"version": INDEX_VERSION, "task": key.path,
                    "artifacts": {name: refs[name].to_json() for name in sorted(refs)}}
        try:
            self._write(path, json.dumps(document, indent=1).encode() + b"\n")
        except Exception as exc:
            raise self._io_error(f"write the artifact index of task {key.path}", path,
                                 exc) from exc

    def _read_index(self, key: TaskKey) -> dict[str, ArtifactRef]:
        fs = self._filesystem()
        path = self._index_path(key)
        try:
            raw = fs.cat_file(path)
        except FileNotFoundError:
            raise ArtifactError(
                f"task {key.path} did not finish: it has no artifact index in {self.url} (it "
                "failed, is still running, or never ran); run or resume it, or check the "
                "flow, run id and store URL") from None
        except Exception as exc:
            raise self._io_error(f"read the artifact index of task {key.path}", path,
                                 exc) from exc
        where = f"the artifact index of task {key.path} ({self._where(path)})"
        try:
            document = json.loads(raw)
            version = document["version"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{where} cannot be read: {type(exc).__name__}: {exc}; delete "
                                "it and rerun the task") from None
        if type(version) is int and version > INDEX_VERSION:
            raise ArtifactError(f"{where} is version {version}, written by a newer corral "
                                f"(this one reads {INDEX_VERSION}); upgrade corral")
        try:
            if version != INDEX_VERSION:
                raise ArtifactError(f"unknown version {version!r}")
            return {name: ArtifactRef.from_json(item)
                    for name, item in document["artifacts"].items()}
        except (KeyError, TypeError, AttributeError, ArtifactError) as exc:
            raise ArtifactError(f"{where} cannot be read: {exc}; delete it and rerun the "
                                "task") from None

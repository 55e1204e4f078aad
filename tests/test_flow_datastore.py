"""The flow artifact store (corral.flow.datastore) on a local directory and on S3.

Most tests run twice: on a ``tmp_path`` store and on ``s3://BUCKET/prefix`` served by moto's
standalone server, an EMULATOR of S3 started here as a subprocess on 127.0.0.1: nothing
leaves this machine, and fake credentials make sure no real AWS endpoint is tried.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from conftest import require
from corral.errors import CorralError, MissingDependency
from corral.flow.datastore import (
    CLOUDPICKLE,
    PICKLE,
    ArtifactError,
    ArtifactNotFound,
    ArtifactRef,
    ArtifactStore,
    TaskArtifacts,
    TaskKey,
)

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}

A = TaskKey("TrainFlow", "run-1", "train", "0")
B = TaskKey("TrainFlow", "run-1", "train", "1")


class Point:
    """A module-level class: pickled by reference."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


# -- the two stores --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    """moto's S3 emulator in its own process; its endpoint URL. Stopped by its handle."""
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
        have = True
    except ImportError:
        have = False
    require(have, "moto[server] and s3fs are not installed: pip install 'moto[server]' s3fs")
    env = {**os.environ, **FAKE_AWS}
    for _attempt in range(3):  # the port may be taken between finding and binding it
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        if proc.poll() is None and time.monotonic() < deadline:
            break
        stop(proc)
    else:
        pytest.fail("moto's server did not start: " + (proc.stderr.read().decode()
                                                       if proc.stderr else ""))
    try:
        yield url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    if request.param == "file":
        return ArtifactStore((tmp_path / "flows").as_uri())
    endpoint = request.getfixturevalue("moto_server")
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)
    options = {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": endpoint}}
    import s3fs

    bucket = f"corral-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    return ArtifactStore(f"s3://{bucket}/flows", storage_options=options)


def fs_of(store: ArtifactStore) -> tuple[Any, str]:
    """The store's filesystem and root, opened here the public way."""
    fs, root = fsspec.core.url_to_fs(store.url, **store.storage_options)
    fs.invalidate_cache()
    return fs, root.rstrip("/")


def blobs(store: ArtifactStore) -> list[str]:
    fs, root = fs_of(store)
    try:
        return sorted(fs.find(f"{root}/data"))
    except FileNotFoundError:
        return []


def blob_of(store: ArtifactStore, ref: ArtifactRef) -> str:
    [path] = [p for p in blobs(store) if p.endswith("/" + ref.sha)]
    return path


# -- round trips ------------------------------------------------------------------------------


def test_values_round_trip_and_identical_values_are_stored_once(store: ArtifactStore) -> None:
    values: dict[str, Any] = {
        "epochs": 3, "loss": 0.25, "name": "résumé", "nothing": None, "raw": b"\x00\xff",
        "config": {"lr": 1e-3, "layers": [64, 64], "nested": {"ok": True}},
        "point": Point(1, 2), "scale": lambda x: 2 * x,  # pickle cannot: cloudpickle does
        "big": os.urandom(6 << 20),  # 6 MiB of noise: no two runs share it
    }
    refs = store.save_task(A, values)
    assert set(refs) == set(values)
    assert refs["epochs"].encoding == PICKLE and refs["scale"].encoding == CLOUDPICKLE
    assert len(blobs(store)) == len(values)
    assert not [p for p in blobs(store) if ".tmp-" in p]

    loaded = store.load_task(A)
    assert loaded.names() == sorted(values)
    for name in ("epochs", "loss", "name", "nothing", "raw", "config", "point", "big"):
        assert loaded[name] == values[name], name
    assert loaded.data.scale(21) == 42
    assert loaded.ref("big").size > 6 << 20

    # the same values again, from another task and one by one: no new blob
    again = store.save_task(B, {"epochs": 3, "config": dict(values["config"]), "other": 7})
    assert again["epochs"] == refs["epochs"] and again["config"] == refs["config"]
    assert store.put(3) == refs["epochs"]
    assert len(blobs(store)) == len(values) + 1
    assert store.get(again["other"]) == 7


def test_numpy_arrays_round_trip(store: ArtifactStore) -> None:
    np = pytest.importorskip("numpy")
    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    mask = np.asfortranarray(np.eye(3, dtype=bool))
    ref = store.save_task(A, {"weights": weights, "mask": mask})["weights"]
    assert ref.encoding == PICKLE
    loaded = store.load_task(A)
    np.testing.assert_array_equal(loaded["weights"], weights)
    assert loaded["weights"].dtype == np.float32 and loaded["mask"].flags.f_contiguous
    assert store.put(weights.copy()) == ref


def test_refs_and_keys_are_plain_values() -> None:
    ref = ArtifactRef("ab" * 32, 10, CLOUDPICKLE)
    assert ArtifactRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref
    for bad in [{"sha": "ab", "size": 1, "encoding": PICKLE}, {"sha": "ab" * 32},
                {"sha": "ab" * 32, "size": -1, "encoding": PICKLE},
                {"sha": "ab" * 32, "size": 1, "encoding": "marshal"}, ["x"]]:
        with pytest.raises(ArtifactError):
            ArtifactRef.from_json(bad)
    assert A.path == "TrainFlow/run-1/train/0"
    for part in ["", "..", "a/b", ".hidden", "-x", "a b", 3]:
        with pytest.raises(ArtifactError, match="task key"):
            TaskKey("F", "r", part, "0")  # type: ignore[arg-type]


def test_a_value_defined_in_main_is_saved_by_value(store: ArtifactStore,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """pickle would only name __main__.Thing, which another process cannot import."""
    main = sys.modules["__main__"]
    thing = type("Thing", (), {"__module__": "__main__", "kind": "made here"})
    monkeypatch.setattr(main, "Thing", thing, raising=False)
    ref = store.put(thing())
    assert ref.encoding == CLOUDPICKLE
    monkeypatch.delattr(main, "Thing")
    assert store.get(ref).kind == "made here"


def test_a_module_registered_by_value_is_saved_by_value(
        store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """How a flow file imported under its own module name reaches a notebook."""
    import cloudpickle

    module = types.ModuleType("corral_test_flowfile")
    exec("class Result:\n    score = 0.9\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert store.put(module.Result()).encoding == PICKLE  # importable: by reference
    cloudpickle.register_pickle_by_value(module)
    try:
        ref = store.put(module.Result())
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    assert ref.encoding == CLOUDPICKLE
    monkeypatch.delitem(sys.modules, module.__name__)
    assert store.get(ref).score == 0.9


# -- laziness -------------------------------------------------------------------------------------


def test_artifacts_load_lazily_and_once(store: ArtifactStore) -> None:
    store.save_task(A, {"good": [1, 2, 3], "broken": {"x": 1}, "gone": "bye"})
    fs, _ = fs_of(store)
    task = store.load_task(A)
    fs.pipe_file(blob_of(store, task.ref("broken")), b"not a pickle")
    fs.rm(blob_of(store, task.ref("gone")))

    assert isinstance(task, TaskArtifacts) and len(task) == 3 and "gone" in task
    assert not task.is_loaded("good")
    assert task["good"] == [1, 2, 3]  # the broken and the missing one are never read
    assert task.is_loaded("good") and not task.is_loaded("broken")
    fs.rm(blob_of(store, task.ref("good")))
    assert task.data.good == [1, 2, 3]  # cached: not read again

    with pytest.raises(ArtifactError, match=r"'broken' of task .*corrupt.*rerun") as corrupt:
        task["broken"]
    assert task.ref("broken").sha in str(corrupt.value)
    with pytest.raises(ArtifactError, match=r"'gone' of task .* is missing") as missing:
        _ = task.data.gone
    assert task.ref("gone").sha in str(missing.value)


def test_unknown_names_list_what_there_is(store: ArtifactStore) -> None:
    store.save_task(A, {"loss": 0.5, "model": "m"})
    task = store.load_task(A)
    with pytest.raises(KeyError, match="has no artifact 'los'; it has: loss, model"):
        task["los"]
    with pytest.raises(AttributeError, match="it has: loss, model"):
        _ = task.data.los
    with pytest.raises(ArtifactNotFound):
        task.ref("los")
    assert task.get("los", 1) == 1 and not hasattr(task.data, "los")
    assert dir(task.data) == ["loss", "model"]
    with pytest.raises(AttributeError, match="read-only"):
        task.data.loss = 1
    assert dict(task) == {"loss": 0.5, "model": "m"}


# -- tasks ----------------------------------------------------------------------------------------


def test_a_task_that_did_not_finish_has_no_artifacts(store: ArtifactStore) -> None:
    assert not store.has_task(A)
    with pytest.raises(ArtifactError, match=r"task TrainFlow/run-1/train/0 did not finish"):
        store.load_task(A)
    store.save_task(A, {})
    assert store.has_task(A) and store.load_task(A).names() == []


def test_bad_names_are_refused_before_anything_is_written(store: ArtifactStore) -> None:
    bad = {"ok": 1, "_private": 2, "2fast": 3, "class": 4, "a-b": 5, 6: 6}
    with pytest.raises(ArtifactError) as info:
        store.save_task(A, bad)
    message = str(info.value)
    for why in ["'_private' starts with '_'", "'2fast' is not a Python identifier",
                "'class' is not", "'a-b' is not", "6 is a int"]:
        assert why in message
    assert "'ok'" not in message
    assert not store.has_task(A) and blobs(store) == []


def test_an_unpicklable_value_is_named_and_leaves_no_index(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactError) as info:
        store.save_task(A, {"fine": 1, "lock": threading.Lock()})
    message = str(info.value)
    assert "artifact 'lock' of task TrainFlow/run-1/train/0" in message
    assert "_thread.lock" in message and "inside the step" in message
    assert isinstance(info.value, CorralError)
    assert not store.has_task(A)
    with pytest.raises(ArtifactError, match=r"a _thread\.lock"):
        store.put(threading.Lock())


def test_copy_task_shares_blobs_and_records(store: ArtifactStore) -> None:
    refs = store.save_task(A, {"model": [0.0] * 1000, "step": 9})
    store.write_meta(A, "transition", {"targets": ["join"], "foreach_count": None})
    before = blobs(store)
    resumed = TaskKey("TrainFlow", "run-2", "train", "0")

    assert store.copy_task(A, resumed) == refs
    assert blobs(store) == before
    copy = store.load_task(resumed)
    assert {n: copy.ref(n) for n in copy} == refs and copy["step"] == 9
    assert store.read_meta(resumed, "transition") == {"targets": ["join"],
                                                      "foreach_count": None}

    fs, _ = fs_of(store)
    fs.rm(blob_of(store, refs["step"]))
    with pytest.raises(ArtifactError, match=r"artifact.* step is missing or damaged.*rerun"):
        store.copy_task(A, TaskKey("TrainFlow", "run-3", "train", "0"))
    assert not store.has_task(TaskKey("TrainFlow", "run-3", "train", "0"))
    with pytest.raises(ArtifactError, match="did not finish"):
        store.copy_task(B, resumed)


def test_inherited_refs_are_listed_without_repickling(store: ArtifactStore) -> None:
    parent = store.save_task(A, {"data": list(range(100)), "lr": 0.1})
    store.save_task(B, {"lr": 0.2}, inherited=parent)
    child = store.load_task(B)
    assert child.ref("data") == parent["data"] and child["lr"] == 0.2
    assert len(blobs(store)) == 3
    with pytest.raises(ArtifactError, match="must be ArtifactRefs"):
        store.save_task(B, {}, inherited={"data": [1]})  # type: ignore[dict-item]


def test_records_round_trip(store: ArtifactStore) -> None:
    store.write_meta(A, "transition", {"targets": ["a", "b"], "num_parallel": 4})
    assert store.read_meta(A, "transition") == {"targets": ["a", "b"], "num_parallel": 4}
    with pytest.raises(ArtifactError, match="no 'other' record"):
        store.read_meta(A, "other")
    with pytest.raises(ArtifactError, match="not JSON"):
        store.write_meta(A, "x", {"when": object()})
    with pytest.raises(ArtifactError, match="cannot name a record"):
        store.write_meta(A, "artifacts", {})


def test_a_damaged_index_says_so(store: ArtifactStore) -> None:
    store.save_task(A, {"x": 1})
    fs, root = fs_of(store)
    index = f"{root}/{A.path}/artifacts.json"
    fs.pipe_file(index, b"{not json")
    with pytest.raises(ArtifactError, match=r"artifact index of task .* cannot be read"):
        store.load_task(A)
    fs.pipe_file(index, json.dumps({"version": 99, "artifacts": {}}).encode())
    with pytest.raises(ArtifactError, match=r"newer corral .* upgrade corral"):
        store.load_task(A)
    fs.pipe_file(index, json.dumps({"version": 1, "artifacts": {"x": {"sha": 1}}}).encode())
    with pytest.raises(ArtifactError, match="not an artifact reference"):
        store.load_task(A)


def test_the_store_pickles_without_its_connection(store: ArtifactStore) -> None:
    store.save_task(A, {"x": 1})
    copy = pickle.loads(pickle.dumps(store))
    assert copy.load_task(A)["x"] == 1


# -- local only -------------------------------------------------------------------------------


def test_a_path_and_a_file_url_are_the_same_store(tmp_path: Path) -> None:
    ArtifactStore(str(tmp_path / "s")).save_task(A, {"x": [1]})
    assert ArtifactStore((tmp_path / "s").as_uri()).load_task(A)["x"] == [1]
    index = tmp_path / "s" / "TrainFlow" / "run-1" / "train" / "0" / "artifacts.json"
    document = json.loads(index.read_text())
    assert document["version"] == 1 and document["task"] == A.path
    assert set(document["artifacts"]) == {"x"}


def test_a_blob_cut_short_is_written_again(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    ref = store.put("x" * 1000)
    blob = tmp_path / "data" / ref.sha[:2] / ref.sha
    blob.write_bytes(blob.read_bytes()[:10])
    assert store.put("x" * 1000) == ref and store.get(ref) == "x" * 1000


def test_a_value_whose_module_is_gone_names_the_fix(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    ref = store.put(Point(1, 2))
    payload = (tmp_path / "data" / ref.sha[:2] / ref.sha).read_bytes()
    renamed = payload.replace(b"test_flow_datastore", b"test_flow_datastorX")
    sha = hashlib.sha256(renamed).hexdigest()
    (tmp_path / "data" / sha[:2]).mkdir(exist_ok=True)
    (tmp_path / "data" / sha[:2] / sha).write_bytes(renamed)
    with pytest.raises(ArtifactError, match="cannot be loaded here: No module named "
                                            "'test_flow_datastorX'; install"):
        store.get(ArtifactRef(sha, len(renamed), PICKLE))


def test_bad_urls_and_missing_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ArtifactError, match="cannot open the artifact store 'nope://x'"):
        ArtifactStore("nope://x").has_task(A)
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(MissingDependency, match="fsspec"):
        ArtifactStore(str(tmp_path)).has_task(A)


def test_a_store_that_cannot_be_written_says_where(tmp_path: Path) -> None:
    (tmp_path / "flows").write_text("a file where the store's folder should be")
    store = ArtifactStore(str(tmp_path / "flows"))
    with pytest.raises(ArtifactError,
                       match=r"cannot look for artifact 'x' of task .* at .*flows/data/"):
        store.save_task(A, {"x": 1})

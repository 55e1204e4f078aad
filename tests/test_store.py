"""The job store and the state machine: concurrency, history, requeue, forward
compatibility, corrupt records, crashed submissions."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import PROGRAMS
from corral.errors import JobNotFound
from corral.spec import JobState
from corral.states import IllegalTransition, Source, allowed, transition
from corral.store import SCHEMA_VERSION, Observation, Owner, Store, open_store

CORRAL = [sys.executable, "-m", "corral.cli"]
TERMINAL = [s for s in JobState if s.is_terminal()]


def new_job(store: Store, job_id: str = "j-1", **fields: object) -> str:
    values: dict = {"name": "j", "backend": "local", "poll_key": "local:x", "nodes": 1,
                    "procs_per_node": 2, **fields}
    store.create(job_id, **values)
    return job_id


def test_eight_processes_submit_1600_jobs_with_unique_ids(corral_home: Path) -> None:
    procs = [subprocess.Popen([sys.executable, str(PROGRAMS / "fake_engine.py"), "200"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "locked" not in err
    ids = [line for out, _ in outputs for line in out.split()]
    assert len(ids) == 1600 and len(set(ids)) == 1600
    store = open_store()
    records = store.jobs("null")
    assert len(records) == 1600 and {r.id for r in records} == set(ids)
    assert {r.state for r in records} == {JobState.PENDING}
    assert all(r.engine_id for r in records)


def test_history_records_every_transition_with_its_source(corral_home: Path) -> None:
    store = open_store()
    job = new_job(store)
    store.apply(job, Observation(JobState.PENDING), Source.SUBMIT, engine_id="42")
    store.apply(job, Observation(JobState.RUNNING, started=1.0), Source.ENGINE)
    store.apply(job, Observation(JobState.RUNNING, "still"), Source.ENGINE)  # no new event
    store.apply(job, Observation(JobState.FAILED, "rank 1 failed", finished=2.0), Source.ENGINE)
    _, changed = store.apply(job, Observation(JobState.SUCCEEDED), Source.ENGINE)
    assert not changed  # terminal is final
    record = store.get(job)
    assert (record.state, record.reason, record.engine_id) == (
        JobState.FAILED, "rank 1 failed", "42")
    events = [(e.from_state, e.to_state, e.source) for e in store.events(job)]
    assert events == [(None, "SUBMITTING", "submit"), ("SUBMITTING", "PENDING", "submit"),
                      ("PENDING", "RUNNING", "engine"), ("RUNNING", "FAILED", "engine")]


def test_engine_requeue_is_the_only_way_out_of_a_terminal_state(corral_home: Path) -> None:
    store = open_store()
    job = new_job(store)
    for state in (JobState.PENDING, JobState.RUNNING, JobState.FAILED):
        store.apply(job, Observation(state, engine_attempt=1), Source.ENGINE)
    record, changed = store.apply(job, Observation(JobState.RUNNING, engine_attempt=2),
                                  Source.ENGINE)
    assert changed and record.state is JobState.RUNNING and record.attempt == 2
    assert record.failure is None and record.finished is None
    tail = [(e.from_state, e.to_state, e.attempt, e.reason) for e in store.events(job)][-2:]
    assert tail == [("FAILED", "PENDING", 2, "requeued by the engine"),
                    ("PENDING", "RUNNING", 2, "")]


def test_unknown_job_is_a_clear_error(corral_home: Path) -> None:
    with pytest.raises(JobNotFound, match=r"no job 'x{77}\.\.\.'"):
        open_store().get("x" * 5000)


# -- the state machine, property-based -----------------------------------------------------

states = st.sampled_from(list(JobState))


@given(current=states, new=states, attempt=st.integers(1, 5))
def test_transition_rules(current: JobState, new: JobState, attempt: int) -> None:
    try:
        change = transition(current, attempt, new)
    except IllegalTransition:
        assert not allowed(current, new)
        assert new is JobState.SUBMITTING or current.is_terminal() or (
            current is JobState.RUNNING and new is JobState.PENDING)
        return
    assert change.state is new and change.attempt == attempt
    assert change.changed == (current is not new)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(states, st.one_of(st.none(), st.integers(1, 4))),
                      max_size=25))
def test_random_event_sequences_keep_the_invariants(
        tmp_path_factory: pytest.TempPathFactory,
        steps: list[tuple[JobState, int | None]]) -> None:
    store = Store(tmp_path_factory.mktemp("db") / "corral.db")
    job = new_job(store)
    state, attempt = JobState.SUBMITTING, 1
    for new, engine_attempt in steps:
        before = store.get(job)
        record, changed = store.apply(job, Observation(new, engine_attempt=engine_attempt),
                                      Source.ENGINE)
        requeued = (engine_attempt is not None and engine_attempt > before.attempt
                    and before.state is not JobState.SUBMITTING
                    and new is not JobState.SUBMITTING)
        assert record.attempt >= before.attempt  # attempts never go down
        assert record.state is not JobState.SUBMITTING or before.state is JobState.SUBMITTING
        if before.state.is_terminal() and not requeued:
            assert record.state is before.state and not changed  # final
        if requeued:
            assert record.attempt == engine_attempt and record.state is new
        state, attempt = record.state, record.attempt
    events = store.events(job)
    for earlier, later in itertools.pairwise(events):
        assert later.from_state == earlier.to_state  # one unbroken chain
        assert later.attempt >= earlier.attempt
    assert events[-1].to_state == state.value and events[-1].attempt == attempt


# -- old readers, bad records ---------------------------------------------------------------

def test_a_newer_corrals_database_is_read(corral_home: Path) -> None:
    store = open_store()
    new_job(store, "old-one")
    db = sqlite3.connect(str(store.path))
    db.execute("ALTER TABLE jobs ADD COLUMN gpu_profile TEXT")
    db.execute("CREATE TABLE flows (id TEXT)")
    db.execute("INSERT INTO jobs (id, name, user, backend, poll_key, state, created, updated,"
               " schema, gpu_profile) VALUES ('from-the-future', 'n', 'u', 'local', 'k', "
               "'PAUSED', 1, 1, 7, 'x')")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 6}")
    db.commit()
    db.close()
    again = Store(store.path)  # no downgrade, no crash
    assert again.schema_version == SCHEMA_VERSION + 6
    future = again.get("from-the-future")
    assert future.state is JobState.UNKNOWN and "newer" in future.reason
    done = subprocess.run([*CORRAL, "ps", "-a"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "from-the-future" in done.stdout and "old-one" in done.stdout


def test_corrupt_record_shows_as_unknown_and_the_rest_are_listed(corral_home: Path) -> None:
    store = open_store()
    new_job(store, "good")
    new_job(store, "bad")
    db = sqlite3.connect(str(store.path))
    db.execute("UPDATE jobs SET notes = '{not json', failure = x'00ff' WHERE id = 'bad'")
    db.commit()
    db.close()
    done = subprocess.run([*CORRAL, "ps", "-a", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    listed = {j["job_id"]: j for j in json.loads(done.stdout)}
    assert listed["bad"]["state"] == "UNKNOWN" and "corrupt record" in listed["bad"]["reason"]
    assert listed["good"]["state"] == "SUBMITTING"
    status = subprocess.run([*CORRAL, "status", "bad"], capture_output=True, text=True)
    assert status.returncode == 0 and "Traceback" not in status.stderr
    assert "corrupt record" in status.stdout


def test_store_in_an_unusable_home_is_a_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    done = subprocess.run([*CORRAL, "ps"], capture_output=True, text=True,
                          env={**os.environ, "CORRAL_HOME": str(not_a_dir)})
    assert done.returncode == 125
    assert done.stderr.startswith("corral: error:") and "Traceback" not in done.stderr


# -- crashed submissions ---------------------------------------------------------------------

def test_a_submission_whose_submitter_died_is_lost_after_the_grace(
        corral_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.backends.local import LocalBackend

    store = open_store()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = Owner.of(dead.pid)
    dead.wait()
    new_job(store, "crashed", owner=owner, poll_key=LocalBackend().poll_key)
    monkeypatch.setenv("CORRAL_SUBMIT_GRACE", "0")
    status = LocalBackend().describe("crashed")
    assert status.state is JobState.FAILED and "submission lost" in status.reason
    assert [e.source for e in store.events("crashed")][-1] == "reconcile"


def test_a_live_submitter_is_left_alone(corral_home: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.backends.local import LocalBackend

    store = open_store()
    new_job(store, "busy", owner=Owner.me(), poll_key=LocalBackend().poll_key)
    monkeypatch.setenv("CORRAL_SUBMIT_GRACE", "0")
    assert LocalBackend().describe("busy").state is JobState.SUBMITTING


def test_owner_identity_needs_pid_and_start_time() -> None:
    me = Owner.me()
    assert me.alive()
    assert not Owner(me.pid, me.start - 100).alive()  # same PID, another process


def test_an_older_database_is_migrated_in_place(corral_home: Path) -> None:
    from corral.store import MIGRATIONS

    path = corral_home / "corral.db"
    corral_home.mkdir(parents=True)
    db = sqlite3.connect(str(path))
    db.executescript(MIGRATIONS[0])  # what corral with schema 1 made
    db.execute("INSERT INTO jobs (id, name, user, backend, poll_key, state, created, updated,"
               " schema) VALUES ('old', 'n', 'u', 'local', 'k', 'SUCCEEDED', 1, 1, 1)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    assert store.get("old").state is JobState.SUCCEEDED
    assert store.status("old").tasks == []  # the table schema 2 added is there


def test_a_cancel_during_submission_stops_what_the_engine_accepted(corral_home: Path) -> None:
    sys.path.insert(0, str(PROGRAMS))
    from fake_engine import NullBackend

    stopped: list[str | None] = []

    class CancelledMidway(NullBackend):
        def _launch(self, spec, plan, record):  # type: ignore[no-untyped-def]
            assert self.cancel(record.id).state is JobState.CANCELLED  # another process
            return "engine-42"

        def _stop(self, record):  # type: ignore[no-untyped-def]
            stopped.append(record.engine_id)

    from corral.spec import JobSpec

    backend = CancelledMidway()
    job = backend.submit(JobSpec(name="x", entrypoint={"kind": "command", "argv": ["true"]}))
    record = open_store().get(job.job_id)
    assert record.state is JobState.CANCELLED and record.engine_id == "engine-42"
    assert stopped == ["engine-42"]  # the job the engine took was cancelled there too

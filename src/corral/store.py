"""The job store: one SQLite database (WAL mode) at ``$CORRAL_HOME/corral.db``.

It is the only writer of job records. Run directories hold logs, plans and payloads; the
state of every job, its ranks and the log of its state changes live here::

    jobs    one row per job: who, where (backend, the engine's own id), the spec, state,
            reason, attempt, times, the process that owns its progress, schema version
    ranks   one row per rank: node, host, state, exit code, signal, pid
    tasks   one row per task of an array job: state, exit code, signal, reason
    queue   one row per job of the embedded queue: its request, place in line, phase,
            placement and dispatch token (:mod:`corral.queue.ledger`)
    queue_usage, queues   decayed fair-share usage; the queues' weights and limits
    flow_runs, flow_tasks   runs of flows and their tasks (:mod:`corral.flow.records`)
    events  every state change: time, from, to, attempt, reason, source
    polls   when each engine was last asked (the watcher's shared minimum interval)

Every state change goes through :mod:`corral.states`. Migrations only ever add tables and
columns, and rows are read by column name, so a database written by a newer corral can be
read by an older one; a state this corral does not know reads as UNKNOWN. Writers take
the write lock up front (``BEGIN IMMEDIATE``) and wait for it, so concurrent processes
queue instead of failing with "database is locked".
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from corral.errors import BackendError, JobNotFound
from corral.jobstate import JobState
from corral.states import IllegalTransition, Source, transition
from corral.status import Failure, JobStatus, RankStatus, TaskStatus

SCHEMA_VERSION = 4
SHARED_MARKER = "queue-shared.json"  # in a corral home served by a shared queue agent
LOCK_WAIT_SECONDS = 120.0

# Each entry moves the schema from version i to i + 1. Only ever append; only ever add.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        user TEXT NOT NULL,
        backend TEXT NOT NULL,
        poll_key TEXT NOT NULL,
        engine_id TEXT,
        options TEXT,
        spec TEXT,
        launcher TEXT,
        nodes INTEGER NOT NULL DEFAULT 1,
        procs_per_node INTEGER NOT NULL DEFAULT 1,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        attempt INTEGER NOT NULL DEFAULT 1,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        started REAL,
        finished REAL,
        run_dir TEXT,
        owner_pid INTEGER,
        owner_start REAL,
        failure TEXT,
        notes TEXT,
        details TEXT,
        schema INTEGER NOT NULL
    );
    CREATE INDEX jobs_live ON jobs (backend, state);
    CREATE INDEX jobs_created ON jobs (created);
    CREATE TABLE ranks (
        job_id TEXT NOT NULL,
        rank INTEGER NOT NULL,
        node INTEGER NOT NULL,
        host TEXT,
        state TEXT NOT NULL,
        exit_code INTEGER,
        signal INTEGER,
        pid INTEGER,
        PRIMARY KEY (job_id, rank)
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        time REAL NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL
    );
    CREATE INDEX events_job ON events (job_id, id);
    CREATE TABLE polls (
        key TEXT PRIMARY KEY,
        last REAL NOT NULL
    );
    """,
    # 2: the tasks of array jobs
    """
    CREATE TABLE tasks (
        job_id TEXT NOT NULL,
        task INTEGER NOT NULL,
        state TEXT NOT NULL,
        exit_code INTEGER,
        signal INTEGER,
        reason TEXT NOT NULL DEFAULT '',
        engine_id TEXT,
        PRIMARY KEY (job_id, task)
    );
    """,
    # 3: the embedded queue (corral.queue.ledger)
    """
    CREATE TABLE queue (
        job_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        user TEXT NOT NULL,
        uid INTEGER NOT NULL,
        queue TEXT NOT NULL,
        request TEXT NOT NULL,
        time_limit REAL,
        qos REAL NOT NULL DEFAULT 0,
        preemptible INTEGER NOT NULL DEFAULT 0,
        after TEXT,
        array_id TEXT,
        array_limit INTEGER,
        array_index INTEGER,
        retries_left INTEGER NOT NULL DEFAULT 0,
        held INTEGER NOT NULL DEFAULT 0,
        foreground INTEGER NOT NULL DEFAULT 0,
        submitted REAL NOT NULL,
        phase TEXT NOT NULL,
        token TEXT,
        dispatched REAL,
        placement TEXT,
        preempt_at REAL,
        preempt_for TEXT,
        outcome TEXT,
        charged_until REAL
    );
    CREATE INDEX queue_phase ON queue (phase, seq);
    CREATE TABLE queue_usage (
        key TEXT PRIMARY KEY,
        value REAL NOT NULL
    );
    CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        weight REAL NOT NULL DEFAULT 1,
        max_running INTEGER
    );
    """,
    # 4: flows (corral.flow.records)
    """
    CREATE TABLE flow_runs (
        id TEXT PRIMARY KEY,
        flow TEXT NOT NULL,
        file TEXT NOT NULL,
        user TEXT NOT NULL,
        params TEXT,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        datastore TEXT NOT NULL,
        origin TEXT,
        created REAL NOT NULL,
        finished REAL,
        owner_pid INTEGER,
        owner_start REAL
    );
    CREATE INDEX flow_runs_flow ON flow_runs (flow, created);
    CREATE TABLE flow_tasks (
        run_id TEXT NOT NULL,
        step TEXT NOT NULL,
        task_id TEXT NOT NULL,
        state TEXT NOT NULL,
        job_id TEXT,
        attempt INTEGER NOT NULL DEFAULT 1,
        cloned_from TEXT,
        reason TEXT NOT NULL DEFAULT '',
        started REAL,
        finished REAL,
        PRIMARY KEY (run_id, step, task_id)
    );
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION

_JOB_COLUMNS = (
    "id", "name", "user", "backend", "poll_key", "engine_id", "options", "spec", "launcher",
    "nodes", "procs_per_node", "state", "reason", "attempt", "created", "updated", "started",
    "finished", "run_dir", "owner_pid", "owner_start", "failure", "notes", "details", "schema",
)
_LIVE = tuple(s.value for s in JobState if not s.is_terminal())
T = TypeVar("T")


class StoreError(BackendError):
    """The job store cannot be opened, read or written."""


class DuplicateJob(StoreError):
    """A job with this id is already recorded."""


def corral_home() -> Path:
    return Path(os.environ.get("CORRAL_HOME") or Path.home() / ".corral")


@dataclass(frozen=True)
class Owner:
    """The local process that makes a job progress (the submitter, then a supervisor)."""

    pid: int
    start: float

    @classmethod
    def me(cls) -> Owner:
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> Owner:
        import psutil

        return cls(pid, psutil.Process(pid).create_time())

    def alive(self) -> bool:
        """True only for this very process: same PID and the same start time."""
        import psutil

        try:
            process = psutil.Process(self.pid)
            return (abs(process.create_time() - self.start) < 0.05
                    and process.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False


@dataclass(frozen=True)
class Observation:
    """What a backend saw of one job; the store turns it into a state change."""

    state: JobState
    reason: str = ""
    engine_attempt: int | None = None  # the engine's count of starts, when it keeps one
    started: float | None = None
    finished: float | None = None
    ranks: tuple[RankStatus, ...] | None = None
    tasks: tuple[TaskStatus, ...] | None = None
    failure: Failure | None = None
    notes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class JobRecord:
    """One row of ``jobs``, parsed. Unreadable parts show as UNKNOWN with the reason."""

    id: str
    name: str
    user: str
    backend: str
    poll_key: str
    state: JobState
    reason: str
    attempt: int
    created: float
    updated: float
    nodes: int = 1
    procs_per_node: int = 1
    engine_id: str | None = None
    options: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None
    launcher: str | None = None
    started: float | None = None
    finished: float | None = None
    run_dir: str | None = None
    owner: Owner | None = None
    failure: Failure | None = None
    notes: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def to_status(self, ranks: Sequence[RankStatus] = ()) -> JobStatus:
        return JobStatus(
            job_id=self.id, name=self.name, backend=self.backend, state=self.state,
            reason=self.reason, nodes=self.nodes, procs_per_node=self.procs_per_node,
            created=self.created, started=self.started, finished=self.finished,
            run_dir=self.run_dir, ranks=list(ranks), failure=self.failure,
            notes=list(self.notes), attempt=self.attempt, user=self.user,
            engine_id=self.engine_id,
        )


@dataclass(frozen=True)
class Event:
    job_id: str
    time: float
    from_state: str | None
    to_state: str
    attempt: int
    reason: str
    source: str


def _loads(text: str | None, what: str, problems: list[str]) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        problems.append(f"{what} is not valid JSON")
        return None


def _state(text: Any, problems: list[str]) -> JobState:
    try:
        return JobState(text)
    except ValueError:
        problems.append(f"state {str(text)[:40]!r} is unknown to this corral "
                        "(written by a newer one?)")
        return JobState.UNKNOWN


def _failure(data: Any, problems: list[str]) -> Failure | None:
    if data is None:
        return None
    try:
        known = {k: data[k] for k in Failure.__dataclass_fields__ if k in data}
        return Failure(**known)
    except (TypeError, KeyError):
        problems.append("failure is unreadable")
        return None


def _record(row: sqlite3.Row) -> JobRecord:
    problems: list[str] = []
    keys = set(row.keys())

    def get(key: str) -> Any:
        return row[key] if key in keys else None

    state = _state(get("state"), problems)
    notes = _loads(get("notes"), "notes", problems) or []
    details = _loads(get("details"), "details", problems) or {}
    owner = (Owner(int(get("owner_pid")), float(get("owner_start") or 0))
             if get("owner_pid") is not None else None)
    try:
        record = JobRecord(
            id=str(get("id")), name=str(get("name") or "?"), user=str(get("user") or "?"),
            backend=str(get("backend") or "?"), poll_key=str(get("poll_key") or ""),
            state=state, reason=str(get("reason") or ""), attempt=int(get("attempt") or 1),
            created=float(get("created") or 0), updated=float(get("updated") or 0),
            nodes=int(get("nodes") or 1), procs_per_node=int(get("procs_per_node") or 1),
            engine_id=get("engine_id"), options=_loads(get("options"), "options", problems),
            spec=_loads(get("spec"), "spec", problems), launcher=get("launcher"),
            started=get("started"), finished=get("finished"), run_dir=get("run_dir"),
            owner=owner, failure=_failure(_loads(get("failure"), "failure", problems),
                                          problems),
            notes=tuple(str(n) for n in notes) if isinstance(notes, list) else (),
            details=details if isinstance(details, dict) else {},
            schema=int(get("schema") or 0),
        )
    except (TypeError, ValueError) as exc:
        problems.append(f"a field is unreadable ({exc})")
        record = JobRecord(id=str(get("id")), name="?", user="?", backend="?", poll_key="",
                           state=JobState.UNKNOWN, reason="", attempt=1, created=0.0,
                           updated=0.0)
    if problems:
        record = replace(record, state=JobState.UNKNOWN,
                         reason="corrupt record: " + "; ".join(problems))
    return record


def _code_columns(returncode: int | None) -> dict[str, int | None]:
    """A subprocess-style return code as the two columns: exit code, or signal number."""
    if returncode is not None and returncode < 0:
        return {"exit_code": None, "signal": -returncode}
    return {"exit_code": returncode, "signal": None}


def _returncode(row: sqlite3.Row) -> int | None:
    if row["exit_code"] is not None:
        return int(row["exit_code"])
    return -int(row["signal"]) if row["signal"] is not None else None


def _rank(row: sqlite3.Row) -> RankStatus:
    return RankStatus(rank=int(row["rank"]), node=int(row["node"]), pid=row["pid"],
                      returncode=_returncode(row), state=_state(row["state"], []),
                      host=row["host"])


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _failure_json(failure: Failure | None) -> str | None:
    from dataclasses import asdict

    return None if failure is None else _json(asdict(failure))


class Store:
    """A connection to the job database. Safe to share between threads of one process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        if (path.parent.exists() and not os.access(path.parent, os.X_OK)) or (
                path.exists() and not os.access(path, os.R_OK)):
            raise StoreError(
                f"cannot open the job store {str(path)!r}: permission denied (the corral home "
                "is another user's); set CORRAL_HOME to a directory of yours")
        # A shared queue's store (corral.queue.shared) belongs to its agent: the others
        # read it and ask the agent for every change.
        self.read_only = path.exists() and not os.access(path, os.W_OK)
        self.shared = (path.parent / SHARED_MARKER).exists()
        self._db = self._connect_read_only() if self.read_only else self._connect()

    # -- opening and migrating -------------------------------------------------------------

    def _connect_read_only(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                 timeout=LOCK_WAIT_SECONDS, isolation_level=None,
                                 check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_SECONDS * 1000)}")
            db.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the job store {str(self.path)!r}: {exc}") from None
        return db

    def _connect(self) -> sqlite3.Connection:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(
                f"cannot create corral's home {str(folder)!r} ({exc.strerror or exc}); set "
                "CORRAL_HOME to a writable directory") from None
        if not folder.is_dir():
            raise StoreError(f"corral's home {str(folder)!r} is not a directory; set "
                             "CORRAL_HOME to a directory")
        try:
            db = sqlite3.connect(str(self.path), timeout=LOCK_WAIT_SECONDS,
                                 isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_SECONDS * 1000)}")
            # WAL lets writers and readers overlap; a shared queue's readers cannot write
            # WAL's index file, so its store keeps a rollback journal instead.
            db.execute("PRAGMA journal_mode = " + ("DELETE" if self.shared else "WAL"))
            db.execute("PRAGMA synchronous = NORMAL")
            self._migrate(db)
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the job store {str(self.path)!r}: {exc}; check that the file "
                "and its folder are writable (or move it away to start a new one)") from None
        mode = 0o644 if self.shared else 0o600  # a shared queue is listed by all, like squeue
        for suffix in ("", "-wal", "-shm"):  # the journal holds the same data
            try:
                os.chmod(f"{self.path}{suffix}", mode)
            except OSError:
                pass
        return db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version >= SCHEMA_VERSION:
            return  # a newer corral's schema only adds to ours: read what we know
        db.execute("BEGIN IMMEDIATE")
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {max(version, SCHEMA_VERSION)}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction holding the write lock (for modules that keep their own
        tables here, such as the queue's ledger)."""
        return self._write()

    def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the connection, errors turned into StoreError."""
        return self._read(work)

    @property
    def schema_version(self) -> int:
        return int(self._read(lambda db: db.execute("PRAGMA user_version").fetchone()[0]))

    # -- transactions ----------------------------------------------------------------------

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return work(self._db)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read the job store {str(self.path)!r}: {exc}") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the database's write lock from its start."""
        if self.read_only:
            raise StoreError(
                f"the job store {str(self.path)!r} is read-only for you: it is a shared "
                "queue's, and its agent makes every change (submit, cancel, hold and release "
                "ask it)")
        with self._lock:
            db = self._db
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while True:
                try:
                    db.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise StoreError(f"cannot write the job store {str(self.path)!r}: "
                                         f"{exc}") from None
                    if time.monotonic() > deadline:
                        raise StoreError(
                            f"the job store {str(self.path)!r} stayed locked for "
                            f"{LOCK_WAIT_SECONDS:.0f}s; is a corral process stuck?") from None
                    time.sleep(0.01)
            try:
                yield db
                db.execute("COMMIT")
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                raise
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise StoreError(f"cannot write the job store {str(self.path)!r}: "
                                 f"{exc}") from None
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # -- jobs ------------------------------------------------------------------------------

    def create(self, job_id: str, *, name: str, backend: str, poll_key: str,
               nodes: int, procs_per_node: int, launcher: str | None = None,
               spec: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
               run_dir: str | None = None, details: dict[str, Any] | None = None,
               owner: Owner | None = None, state: JobState = JobState.SUBMITTING,
               reason: str = "", user: str | None = None,
               also: Callable[[sqlite3.Connection], None] | None = None) -> JobRecord:
        """Record a new job as SUBMITTING, before any engine is called (or, for the
        embedded queue, as PENDING together with its queue entry: ``also`` writes more
        rows in the same transaction)."""
        now = time.time()
        values = {
            "id": job_id, "name": name, "user": user or _user(), "backend": backend,
            "poll_key": poll_key, "engine_id": None, "options": _json(options),
            "spec": _json(spec), "launcher": launcher, "nodes": nodes,
            "procs_per_node": procs_per_node, "state": state.value,
            "reason": reason, "attempt": 1, "created": now, "updated": now, "started": None,
            "finished": None, "run_dir": run_dir,
            "owner_pid": owner.pid if owner else None,
            "owner_start": owner.start if owner else None, "failure": None, "notes": None,
            "details": _json(details or {}), "schema": SCHEMA_VERSION,
        }
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        try:
            with self._write() as db:
                db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", tuple(values.values()))
                ranks = [(job_id, r, r // procs_per_node, JobState.PENDING.value)
                         for r in range(nodes * procs_per_node)]
                db.executemany("INSERT INTO ranks (job_id, rank, node, state) VALUES (?,?,?,?)",
                               ranks)
                self._event(db, job_id, None, state, 1, reason, Source.SUBMIT, now)
                if also is not None:
                    also(db)
        except sqlite3.IntegrityError:
            raise DuplicateJob(f"a job {job_id!r} is already recorded") from None
        return self.get(job_id)

    def get(self, job_id: str) -> JobRecord:
        row = self._read(lambda db: db.execute(
            "SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
        if row is None:
            shown = job_id if len(job_id) <= 80 else job_id[:77] + "..."
            raise JobNotFound(f"no job {shown!r} in {str(self.path)!r}; `corral ps -a` lists "
                              "the known jobs")
        return _record(row)

    def ranks(self, job_id: str) -> list[RankStatus]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM ranks WHERE job_id = ? ORDER BY rank", (job_id,)).fetchall())
        return [_rank(r) for r in rows]

    def status(self, job_id: str) -> JobStatus:
        status = self.get(job_id).to_status(self.ranks(job_id))
        status.tasks = self.tasks(job_id)
        return status

    def jobs(self, backend: str | None = None, live: bool = False,
             poll_key: str | None = None) -> list[JobRecord]:
        """Recorded jobs, newest first (only unfinished ones with ``live``)."""
        clauses, params = [], []
        if backend is not None:
            clauses.append("backend = ?")
            params.append(backend)
        if poll_key is not None:
            clauses.append("poll_key = ?")
            params.append(poll_key)
        if live:
            clauses.append(f"state IN ({', '.join('?' for _ in _LIVE)})")
            params.extend(_LIVE)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(lambda db: db.execute(
            f"SELECT * FROM jobs {where} ORDER BY created DESC, id", params).fetchall())
        return [_record(r) for r in rows]

    def events(self, job_id: str) -> list[Event]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM events WHERE job_id = ? ORDER BY id", (job_id,)).fetchall())
        return [Event(r["job_id"], r["time"], r["from_state"], r["to_state"], r["attempt"],
                      r["reason"], r["source"]) for r in rows]

    # -- state changes ---------------------------------------------------------------------

    @staticmethod
    def _event(db: sqlite3.Connection, job_id: str, old: JobState | None, new: JobState,
               attempt: int, reason: str, source: Source, now: float) -> None:
        db.execute(
            "INSERT INTO events (job_id, time, from_state, to_state, attempt, reason, source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, now, old.value if old else None, new.value, attempt, reason, source.value),
        )

    def apply(self, job_id: str, observed: Observation, source: Source, *,
              engine_id: str | None = None, owner: Owner | None = None,
              clear_owner: bool = False,
              also: Callable[[sqlite3.Connection, bool], None] | None = None,
              ) -> tuple[JobRecord, bool]:
        """Move a job to what was observed, if the state machine allows it.

        Returns the record after the change and whether the state (or attempt) changed;
        ``also`` writes more rows in the same transaction. A move the state machine
        refuses (a terminal state seen changing without an engine requeue, a stale
        observation) changes nothing.
        """
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT state, attempt FROM jobs WHERE id = ?",
                             (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id!r} in {str(self.path)!r}")
            current, attempt = _state(row["state"], []), int(row["attempt"])
            try:
                change = transition(current, attempt, observed.state, observed.engine_attempt)
            except IllegalTransition:
                change = None
            sets: dict[str, Any] = {"updated": now}
            if engine_id is not None:
                sets["engine_id"] = engine_id
            if owner is not None:
                sets["owner_pid"], sets["owner_start"] = owner.pid, owner.start
            elif clear_owner:
                sets["owner_pid"] = sets["owner_start"] = None
            if change is not None:
                if change.requeued:
                    why = "requeued by the engine" + (
                        f": {observed.reason}" if observed.state is JobState.PENDING
                        and observed.reason else "")
                    self._event(db, job_id, current, JobState.PENDING, change.attempt, why,
                                source, now)
                    sets.update(failure=None, finished=None)
                    current = JobState.PENDING
                if change.state is not current:
                    self._event(db, job_id, current, change.state, change.attempt,
                                observed.reason, source, now)
                sets.update(state=change.state.value, attempt=change.attempt,
                            reason=observed.reason)
                for name in ("started", "finished"):
                    value = getattr(observed, name)
                    if value is not None:
                        sets[name] = value
                if observed.failure is not None:
                    sets["failure"] = _failure_json(observed.failure)
                if observed.notes is not None:
                    sets["notes"] = _json(list(observed.notes))
                if observed.ranks is not None:
                    self._write_ranks(db, job_id, observed.ranks)
                if observed.tasks is not None:
                    self._write_tasks(db, job_id, observed.tasks)
            assignments = ", ".join(f"{k} = ?" for k in sets)
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*sets.values(), job_id))
            if also is not None:  # more rows in the same transaction, told if it moved
                also(db, change is not None)
        return self.get(job_id), change is not None and change.changed

    @staticmethod
    def _upsert(db: sqlite3.Connection, table: str, keys: tuple[str, ...],
                row: dict[str, Any]) -> None:
        """Insert ``row`` into ``table``, or update the row with the same ``keys``."""
        columns = ", ".join(row)
        updates = ", ".join(f"{c} = excluded.{c}" for c in row if c not in keys)
        db.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' for _ in row)}) "
                   f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}",
                   tuple(row.values()))

    @classmethod
    def _write_ranks(cls, db: sqlite3.Connection, job_id: str,
                     ranks: Sequence[RankStatus]) -> None:
        for rank in ranks:
            cls._upsert(db, "ranks", ("job_id", "rank"), {
                "job_id": job_id, "rank": rank.rank, "node": rank.node, "host": rank.host,
                "state": rank.state.value, **_code_columns(rank.returncode), "pid": rank.pid})

    @classmethod
    def _write_tasks(cls, db: sqlite3.Connection, job_id: str,
                     tasks: Sequence[TaskStatus]) -> None:
        for task in tasks:
            cls._upsert(db, "tasks", ("job_id", "task"), {
                "job_id": job_id, "task": task.task, "state": task.state.value,
                **_code_columns(task.returncode), "reason": task.reason,
                "engine_id": task.engine_id})

    def tasks(self, job_id: str) -> list[TaskStatus]:
        rows = self._read(lambda db: db.execute(
            "SELECT * FROM tasks WHERE job_id = ? ORDER BY task", (job_id,)).fetchall())
        return [TaskStatus(task=int(row["task"]), state=_state(row["state"], []),
                           returncode=_returncode(row), reason=str(row["reason"] or ""),
                           engine_id=row["engine_id"]) for row in rows]

    def update_ranks(self, job_id: str, ranks: Sequence[RankStatus]) -> None:
        """Record rank details that are not a change of the job's state."""
        with self._write() as db:
            self._write_ranks(db, job_id, ranks)

    def update_details(self, job_id: str, **details: Any) -> None:
        with self._write() as db:
            row = db.execute("SELECT details FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id!r} in {str(self.path)!r}")
            current = _loads(row["details"], "details", []) or {}
            current.update(details)
            db.execute("UPDATE jobs SET details = ?, updated = ? WHERE id = ?",
                       (_json(current), time.time(), job_id))

    # -- the watcher's shared clock --------------------------------------------------------

    def claim_poll(self, key: str, interval: float) -> bool:
        """True if it is this process's turn to ask the engine behind ``key`` (at most once
        per ``interval`` seconds, across every corral process on this machine)."""
        now = time.time()
        seen = self._read(lambda db: db.execute(
            "SELECT last FROM polls WHERE key = ?", (key,)).fetchone())
        if seen is not None and now - float(seen["last"]) < interval:
            return False  # not our turn: decided without taking the write lock
        with self._write() as db:
            row = db.execute("SELECT last FROM polls WHERE key = ?", (key,)).fetchone()
            if row is not None and now - float(row["last"]) < interval:
                return False
            db.execute("INSERT INTO polls (key, last) VALUES (?, ?) ON CONFLICT (key) DO "
                       "UPDATE SET last = excluded.last", (key, now))
        return True


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


_STORES: dict[tuple[int, str], Store] = {}
_STORES_LOCK = threading.Lock()


def open_store(path: Path | None = None) -> Store:
    """The store at ``path`` (default ``$CORRAL_HOME/corral.db``), one per process."""
    target = path or corral_home() / "corral.db"
    key = (os.getpid(), str(target))
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = Store(target)
        return store

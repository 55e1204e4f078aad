"""The queue under stress: its agent SIGKILLed again and again during 1,000 real jobs (each
runs exactly once), and 8 processes submitting 500 jobs each at the same time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from corral.backends.local import LocalBackend
from corral.jobstate import JobState
from corral.queue.submission import Submission, parse_array
from corral.spec import JobSpec
from corral.store import open_store


def kill_agent(home: Path) -> bool:
    """SIGKILL the running agent (checked by PID and start time); True if one was killed."""
    try:
        data = json.loads((home / "queue-agent.pid").read_text(encoding="utf-8"))
        agent = psutil.Process(int(data["pid"]))
        if abs(agent.create_time() - float(data["started"])) > 5 or not agent.is_running():
            return False
        agent.send_signal(signal.SIGKILL)
        agent.wait(5)
        return True
    except (OSError, ValueError, KeyError, psutil.Error):
        return False


def test_sigkilled_agent_loses_nothing_and_runs_each_job_once(
        tmp_path: Path, corral_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_QUEUE_CPUS", "2")
    ledger = tmp_path / "ran.txt"
    spec = JobSpec(name="once", resources={"cpus": 0.2},
                   entrypoint={"kind": "command",
                               "argv": ["sh", "-c", f'echo "$CORRAL_JOB_ID" >> {ledger}']})
    backend = LocalBackend()
    ids = backend.submit_queued(spec, submission=Submission(array=parse_array("0-999")))
    assert len(set(ids)) == 1000
    store = open_store()
    kills = 0
    deadline = time.monotonic() + 600
    while True:
        live = store.jobs(live=True)
        if not live:
            break
        assert time.monotonic() < deadline, f"{len(live)} jobs still unfinished"
        time.sleep(0.8)
        kills += kill_agent(corral_home)
        backend.refresh(force=True)  # whoever looks starts a new agent
    states = Counter(store.get(i).state for i in ids)
    runs = Counter(ledger.read_text().split())
    print(f"agent SIGKILLed {kills} times; states {dict(states)}; "
          f"{len(runs)} jobs ran, most runs of one job: {max(runs.values())}")
    assert kills >= 5
    assert states == {JobState.SUCCEEDED: 1000}
    assert set(runs) == set(ids) and set(runs.values()) == {1}  # each exactly once
    assert {store.get(i).attempt for i in ids} == {1}


SUBMITTER = """
import sys
from corral.backends.local import LocalBackend
from corral.queue.submission import Submission
from corral.spec import JobSpec
backend = LocalBackend()
spec = JobSpec(name="many", entrypoint={"kind": "command", "argv": ["true"]})
ids = [backend.submit_queued(spec, submission=Submission(hold=True))[0] for _ in range(500)]
print("\\n".join(ids))
"""


def test_eight_processes_submitting_500_each_get_4000_unique_jobs() -> None:
    submitters = [subprocess.Popen([sys.executable, "-c", SUBMITTER], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=os.environ.copy())
                  for _ in range(8)]
    outputs = [p.communicate(timeout=600) for p in submitters]
    assert all(p.returncode == 0 for p in submitters), [err[-2000:] for _, err in outputs]
    ids = [line for out, _ in outputs for line in out.split()]
    assert len(ids) == 4000 and len(set(ids)) == 4000
    store = open_store()
    records = store.jobs()
    assert len(records) == 4000 and {r.id for r in records} == set(ids)
    seqs = store.read(lambda db: [r[0] for r in db.execute("SELECT seq FROM queue")])
    assert sorted(seqs) == list(range(1, 4001))  # one place in line each, no gaps
    assert {r.state for r in records} == {JobState.PENDING}

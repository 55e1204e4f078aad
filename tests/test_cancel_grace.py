"""A cancel gives ranks the whole grace period to clean up, then leaves nothing behind."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import PROGRAMS, leftover_processes
from corral.backends.local import LocalBackend, LocalOptions
from corral.spec import JobSpec, JobState


def test_cancel_waits_for_a_long_grace(tmp_path: Path) -> None:
    backend = LocalBackend(LocalOptions(grace_seconds=30))
    spec = JobSpec(name="graceful", entrypoint={"kind": "script",
                   "path": str(PROGRAMS / "slow_cleanup.py")},
                   args=[str(tmp_path), "12"], nodes=2, procs_per_node=1)
    job = backend.submit(spec).job_id
    deadline = time.monotonic() + 30
    while sum("ready" in line for _, line in backend.logs(job)) < 2:
        assert time.monotonic() < deadline, backend.describe(job).summary()
        time.sleep(0.1)
    status = backend.cancel(job)  # 12 s of cleanup: longer than any fixed 10 s fallback
    assert status.state is JobState.CANCELLED, status.summary()
    assert sorted(p.name for p in tmp_path.glob("*.clean")) == ["rank-0.clean", "rank-1.clean"]
    assert leftover_processes(status.run_dir or "", job) == []

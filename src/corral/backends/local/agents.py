"""Node agents by identity: a PID plus its start time, so a recycled PID is never mistaken
for one of ours; and stopping agents that a supervisor left behind."""

from __future__ import annotations

from collections.abc import Sequence

from corral.store import Owner


def identities(pids: Sequence[int]) -> list[list[float]]:
    """``[pid, start time]`` of each process still alive (those are never mistaken later)."""
    found = []
    for pid in pids:
        try:
            found.append([pid, Owner.of(pid).start])
        except Exception:  # gone already: nothing to stop later
            continue
    return found


def stop_agents(agents: Sequence[Sequence[float]], grace: float) -> int:
    """Stop node agents that a supervisor left behind, and everything under them.

    Each agent is ``(pid, start time)``: a process is signalled only if it is that very
    process (a recycled PID belongs to a stranger). Descendants are found before the
    agents die (torchrun's workers run in sessions of their own). Returns how many
    agents were still alive.
    """
    import psutil

    victims: list[psutil.Process] = []
    alive = 0
    for pid, start in agents:
        if not Owner(int(pid), float(start)).alive():
            continue
        alive += 1
        try:
            agent = psutil.Process(int(pid))
            victims.extend([agent, *agent.children(recursive=True)])
        except psutil.Error:
            continue
    for process in victims:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(victims, timeout=grace)
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=2)
    return alive

"""A queued test job: records when it ran and what it saw, then sleeps and exits.

Usage: queue_job.py OUT_DIR NAME SECONDS [EXIT_CODE] [--fail-first]
Writes OUT_DIR/NAME.<attempt>.json with start/end times, CUDA_VISIBLE_DEVICES and the array
task id. SIGUSR1 (the queue's preemption warning) is recorded in OUT_DIR/NAME.usr1; a job
that was warned once sleeps only briefly when it runs again.
"""

import json
import os
import signal
import sys
import time

out, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
code = int(sys.argv[4]) if len(sys.argv) > 4 and not sys.argv[4].startswith("--") else 0
if os.environ.get("CORRAL_ARRAY_TASK_ID"):  # each task of an array keeps its own record
    name = f"{name}-{os.environ['CORRAL_ARRAY_TASK_ID']}"
attempt = 1
while os.path.exists(os.path.join(out, f"{name}.{attempt}.json")):
    attempt += 1
warned = os.path.join(out, f"{name}.usr1")
if os.path.exists(warned):
    seconds = 0.2


def on_usr1(signum, frame):
    with open(warned, "w") as handle:
        handle.write(str(time.time()))


signal.signal(signal.SIGUSR1, on_usr1)
record = {"start": time.time(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
          "task": os.environ.get("CORRAL_ARRAY_TASK_ID"), "attempt": attempt,
          "pid": os.getpid()}
print(f"{name} started", flush=True)
deadline = time.time() + seconds
while time.time() < deadline:
    time.sleep(0.05)
record["end"] = time.time()
with open(os.path.join(out, f"{name}.{attempt}.json"), "w") as handle:
    json.dump(record, handle)
print(f"{name} done", flush=True)
if "--fail-first" in sys.argv and attempt == 1:
    sys.exit(3)
sys.exit(code)

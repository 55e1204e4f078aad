"""A sweep loop over corral.run(): Ctrl-C must stop the loop, not only the current job."""

import sys

import corral

for i in range(3):
    print(f"run {i}", flush=True)
    try:
        corral.run(corral.JobSpec(name=f"sweep-{i}", entrypoint={
            "kind": "command", "argv": ["sh", "-c", "echo started; sleep 60"]}), stream=True)
    except KeyboardInterrupt:
        print(f"interrupted during run {i}", flush=True)
        sys.exit(3)
print("the loop went on", flush=True)

"""Submit a 4-node x 8-rank torchrun job through TorchX's AWS Batch scheduler; print the handle.

The baseline of bench/aws_batch_submit.py, run with bench/.venv-peers/bin/python (TorchX 0.7.0
and boto3; AWS_ENDPOINT_URL and credentials from the environment: moto's server, an
emulator). TorchX's ``dist.ddp`` component, ``j=4x8``, image ``corral-bench:latest``, script
``train.py``; the job queue from argv. Returns once the job is submitted.
"""

from __future__ import annotations

import sys

from torchx.components.dist import ddp
from torchx.runner import get_runner


def main(argv: list[str]) -> int:
    app = ddp(script="train.py", image="corral-bench:latest", j="4x8", name="train")
    with get_runner() as runner:
        handle = runner.run(app, scheduler="aws_batch", cfg={"queue": argv[0]})
    print(handle, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

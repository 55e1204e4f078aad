"""Submit a 2-pod no-op job through TorchX's Kubernetes scheduler (a Volcano Job); print the handle.

The baseline of bench/k8s_submit.py, run with bench/.venv-peers/bin/python (TorchX 0.7.0 and
the ``kubernetes`` client; KUBECONFIG from the environment). One role, two replicas, each
running ``python3 -c pass``; Volcano queue and namespace from argv (default: ``default``).
Prints the app handle, ``kubernetes://torchx/NAMESPACE:NAME``, and returns at once.
"""

from __future__ import annotations

import sys

from torchx.runner import get_runner
from torchx.specs import AppDef, Role


def main(argv: list[str]) -> int:
    queue = argv[0] if argv else "default"
    namespace = argv[1] if len(argv) > 1 else "default"
    app = AppDef(name="noop", roles=[Role(
        name="noop", image="corral-bench:latest", entrypoint="python3", args=["-c", "pass"],
        num_replicas=2)])
    with get_runner() as runner:
        handle = runner.run(app, scheduler="kubernetes",
                            cfg={"queue": queue, "namespace": namespace})
    print(handle, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

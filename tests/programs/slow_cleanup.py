"""Every rank, on SIGTERM, takes SECONDS to clean up, then writes OUT_DIR/rank-R.clean."""

import os
import signal
import sys
import time
from pathlib import Path

rank = int(os.environ["RANK"])
out_dir, seconds = Path(sys.argv[1]), float(sys.argv[2])


def clean_up(signum: int, frame: object) -> None:
    time.sleep(seconds)
    (out_dir / f"rank-{rank}.clean").write_text("done")
    sys.exit(0)


signal.signal(signal.SIGTERM, clean_up)
print(f"rank {rank} ready", flush=True)
time.sleep(600)

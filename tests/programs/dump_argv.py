"""Write what this process received (argv after OUT, some env) to OUT as JSON."""

import json
import os
import sys

out = sys.argv[1]
with open(out, "w", encoding="utf-8") as handle:
    json.dump({"argv": sys.argv[2:], "hostile": os.environ.get("HOSTILE"),
               "name": os.environ.get("CORRAL_JOB_NAME"), "rank": os.environ.get("RANK")},
              handle)

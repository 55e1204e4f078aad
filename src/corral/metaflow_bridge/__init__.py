"""The Metaflow bridge: run a Metaflow step, or a ``num_parallel`` gang step, as a corral job.

Add ``@corral`` (``from metaflow import corral``) to the step; nothing else changes. The
Metaflow runtime then starts ``flow.py corral step ...`` for the task, which runs one corral
job of ``num_parallel`` nodes whose node N runs Metaflow's own ``step`` command for the gang's
task N. corral's gang rules apply (a failed worker fails the step; the others are stopped),
each worker's output is saved as that worker task's log, and the step uses Metaflow's own
datastore and metadata (the local ones included).

Tested with metaflow 2.19.39 (and metaflow-torchrun 0.2.2 for ``@torchrun``).
"""

TESTED_METAFLOW = "2.19.39"

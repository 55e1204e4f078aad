"""Metaflow finds corral's bridge here (``pip install corral[metaflow]``).

``@corral`` on a step runs that step as a corral job; on a ``num_parallel`` step (``@parallel``
or a decorator built on it, such as ``@torchrun``) the job is one gang of N nodes. The code
lives in :mod:`corral.metaflow_bridge`.
"""

STEP_DECORATORS_DESC = [("corral", "corral.metaflow_bridge.decorator.CorralDecorator")]
TRAMPOLINE_CLIS_DESC = [("corral", "corral.metaflow_bridge.cli.cli")]

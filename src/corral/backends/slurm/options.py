"""Typed Slurm options. Unknown keys and bad values are errors that say what is accepted."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from corral.backends.typed_options import BackendOptions

_NAME = r"^[A-Za-z0-9_.+-]+$"
_ARRAY = re.compile(r"^\d+(-\d+(:\d+)?)?(,\d+(-\d+(:\d+)?)?)*(%\d+)?$")
_DEPENDENCY = re.compile(
    r"^(singleton|((after|afterany|afterok|afternotok|aftercorr|afterburstbuffer)"
    r"(:\d+(\+\d+)?)+)([,?]((after|afterany|afterok|afternotok|aftercorr)(:\d+(\+\d+)?)+))*)$"
)


class SlurmOptions(BackendOptions):
    """What a platform engineer sets once (in a profile) and researchers never see."""

    backend_name = "slurm"

    partition: str | None = Field(default=None, pattern=_NAME)
    account: str | None = Field(default=None, pattern=_NAME)
    qos: str | None = Field(default=None, pattern=_NAME)
    reservation: str | None = Field(default=None, pattern=_NAME)
    constraint: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.&|\[\]*()!,:-]+$")
    gpus_per_node: int | None = Field(default=None, ge=0)
    gres: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_:,.-]+$")
    cpus_per_task: int | None = Field(default=None, ge=1)
    exclusive: bool = False
    requeue: bool | None = None  # --requeue / --no-requeue (None: the cluster's default)
    array: str | None = None
    dependency: str | None = None
    extra_sbatch: tuple[str, ...] = ()
    container: Literal["none", "pyxis", "apptainer"] = "none"
    container_mounts: tuple[str, ...] = ()
    mpi_mode: Literal["srun", "mpirun"] = "srun"
    srun_mpi: str = Field(default="pmix", pattern=_NAME)
    python: str | None = None  # interpreter on the cluster; default: this one (shared FS)
    run_root: str | None = None  # shared-filesystem folder for run dirs (default CORRAL_HOME)
    snapshot: bool = True  # copy the working directory into the run dir at submit
    snapshot_exclude: tuple[str, ...] = ()  # glob patterns (relative paths) left out
    snapshot_max_mb: float = Field(default=1024, gt=0)  # refuse a larger snapshot
    ssh: str | None = None  # submit through this login host ([user@]host)
    ssh_config: str | None = None
    # The least time between two questions to slurmctld, shared by every corral process
    # on this machine: one `scontrol show job` (plus `sacct` for jobs it forgot) per interval.
    poll_seconds: float = Field(default=1.0, gt=0)
    # Each node's processes of the job are sampled this often (a step beside the ranks:
    # corral.runtime.sampler); 0: not at all. Not inside a container. Off unless asked for:
    # on the test cluster a node's slurmd once died launching the two steps together.
    profile_seconds: float = Field(default=0.0, ge=0, le=3600)

    @field_validator("array")
    @classmethod
    def _array(cls, value: str | None) -> str | None:
        if value is not None and not _ARRAY.match(value):
            raise ValueError("accepted: '0-3', '1,3,5', '0-15:4', '0-99%10'")
        return value

    @field_validator("dependency")
    @classmethod
    def _dependency(cls, value: str | None) -> str | None:
        if value is not None and not _DEPENDENCY.match(value):
            raise ValueError("accepted: 'afterok:123', 'afterany:12:13', 'singleton', ...")
        return value

    @field_validator("extra_sbatch")
    @classmethod
    def _extra(cls, lines: tuple[str, ...]) -> tuple[str, ...]:
        for line in lines:
            if "\n" in line or "\r" in line or not line.startswith("--"):
                raise ValueError(
                    f"{line!r}: give one option per item, like '--mail-type=END', no newlines"
                )
        return lines


def slurm_time(seconds: float) -> str:
    """Slurm's ``--time``: whole minutes rounded up, as D-HH:MM:SS."""
    total = max(60, int(-(-seconds // 60)) * 60)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}" if days else (
        f"{hours:02d}:{minutes:02d}:{secs:02d}")

"""Typed Azure Batch options. Unknown keys and bad values are errors that say what is accepted.

The account comes from the options or, where they leave it out, from the environment (the
names the Azure CLI uses where it has one): ``account_url`` or ``$AZURE_BATCH_ENDPOINT``,
``account_name`` or ``$AZURE_BATCH_ACCOUNT``, ``account_key`` or ``$AZURE_BATCH_ACCOUNT_KEY``
(then ``$AZURE_BATCH_ACCESS_KEY``). The key is a secret: it is never printed, never recorded
with a job, and so a later ``corral ps`` in another shell reads it from the environment again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from corral.backends.typed_options import BackendOptions
from corral.spec import parse_duration

# Azure Batch ids (jobs, tasks, pools): letters, digits, hyphens and underscores, at most 64.
AZURE_ID = r"^[A-Za-z0-9_-]{1,64}$"
URL_ENV = "AZURE_BATCH_ENDPOINT"
NAME_ENV = "AZURE_BATCH_ACCOUNT"
KEY_ENVS = ("AZURE_BATCH_ACCOUNT_KEY", "AZURE_BATCH_ACCESS_KEY")


class AzureBatchOptions(BackendOptions):
    """What a platform engineer sets once (in a profile) and researchers never see."""

    backend_name = "azure-batch"

    # The account: https://ACCOUNT.REGION.batch.azure.com (http://127.0.0.1:PORT for a fake).
    account_url: str | None = Field(default=None, pattern=r"^https?://[^\s/?#]+/?$")
    account_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{1,64}$")
    account_key: SecretStr | None = None
    # The pool the job runs on (default: the job's queue). It needs inter-node communication
    # and one task slot per node: a multi-instance task takes whole nodes.
    pool: str | None = Field(default=None, pattern=AZURE_ID)
    # A container image (default: the job's image). Without one, the task runs on the pool's
    # VMs themselves, which then need Python and corral (a start task installs them).
    image: str | None = Field(default=None, min_length=1)
    container_run_options: str | None = None  # extra `docker create` flags (--shm-size=8g)
    # How code reaches the nodes: "package" ships the working directory through object
    # storage (package_store); "image" runs what the image (or the VM) holds, in image_workdir.
    code: Literal["package", "image"] = "package"
    image_workdir: str = Field(default="/workspace", pattern=r"^/\S*$")
    package_store: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9+.-]*://\S+$")
    package_exclude: tuple[str, ...] = ()
    package_max_mb: float = Field(default=1024, gt=0)
    python: str = Field(default="python3", min_length=1)  # on the node, corral installed there
    master_port: int = Field(default=29500, ge=1024, le=65535)
    poll_seconds: float = Field(default=5.0, gt=0)
    # The task's constraints: its longest run (the job's time limit comes first), how long
    # Azure keeps its files on the nodes, how often Azure retries it (the whole gang).
    max_wall_clock: float | None = None
    retention: float | None = None
    max_task_retry_count: int = Field(default=0, ge=-1, le=100)
    elevation: Literal["nonadmin", "admin"] = "nonadmin"

    @field_validator("max_wall_clock", "retention", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float | None:
        return None if value is None else parse_duration(value)

    @field_validator("package_exclude", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    # -- the account, with the environment's defaults --------------------------------------

    def resolved_url(self, env: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if env is None else env
        url = self.account_url or env.get(URL_ENV, "").strip() or None
        if url and "://" not in url:  # the Azure CLI's endpoint may leave the scheme out
            url = f"https://{url}"
        return url.rstrip("/") if url else None

    def resolved_name(self, env: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if env is None else env
        return self.account_name or env.get(NAME_ENV, "").strip() or None

    def resolved_key(self, env: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if env is None else env
        if self.account_key is not None:
            return self.account_key.get_secret_value()
        return next((env[k].strip() for k in KEY_ENVS if env.get(k, "").strip()), None)

    def public_data(self) -> dict[str, Any]:
        """The options as plain data without the key (for job records and dry runs)."""
        data: dict[str, Any] = self.model_dump(mode="json", exclude={"account_key"})
        return data

"""Typed AWS Batch options: what a platform engineer sets once in a profile (the queue, the
image, the roles) and what a run may change (``-o scheduling_priority=50``). Unknown keys and
bad values are errors naming the field, the value and what is accepted."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from corral.backends.aws.session import AwsConnection
from corral.backends.typed_options import BackendOptions, key_value_pairs

_ARN = r"^arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:\d{12}:\S+$"
_ROLE = r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$"


class AwsBatchOptions(BackendOptions):
    backend_name = "aws-batch"

    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    profile: str | None = None
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/.*)?$")
    job_queue: str | None = None  # name or ARN; default: the job's --queue
    image: str | None = None  # default: the job's --image
    python: str = "python3"  # the interpreter in the image (corral installed there)
    # How code reaches the nodes: "image" runs what the image holds in image_workdir; "s3"
    # ships the working directory as a package under package_store (the nodes fetch it with
    # fsspec + s3fs, installed in the image, with the job role's credentials).
    code: Literal["image", "s3"] = "image"
    image_workdir: str = Field(default="/workspace", pattern=r"^/")
    package_store: str | None = Field(default=None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,62}"
                                      r"(/\S*)?$")
    package_exclude: tuple[str, ...] = ()
    package_max_mb: float = Field(default=1024, gt=0)
    job_role_arn: str | None = Field(default=None, pattern=_ROLE)
    execution_role_arn: str | None = Field(default=None, pattern=_ROLE)
    shm_size_mb: int | None = Field(default=None, ge=1, le=1_048_576)  # /dev/shm, MiB
    memory_mb: int = Field(default=2048, ge=4)  # per node, when the job does not say
    log_group: str | None = Field(default=None, pattern=r"^[\.\-_/#A-Za-z0-9]{1,512}$")
    scheduling_priority: int | None = Field(default=None, ge=0, le=9999)
    share_identifier: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{1,254}\*?$")
    retry_attempts: int = Field(default=1, ge=1, le=10)
    tags: dict[str, str] = Field(default_factory=dict)
    propagate_tags: bool = True
    master_port: int = Field(default=29500, ge=1024, le=65535)
    stop_grace: int = Field(default=10, ge=1, le=300)  # SIGTERM to SIGKILL in a node
    poll_seconds: float = Field(default=10.0, gt=0)  # the least time between two looks

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        if isinstance(value, dict):  # as it is: a value that is not a string is refused
            return value
        return key_value_pairs(value, "each tag", usage="write KEY=VALUE (e.g. team=vision)")

    @field_validator("tags")
    @classmethod
    def _tag_rules(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if key.lower().startswith("aws:"):
                raise ValueError(f"{key!r}: tag keys starting with 'aws:' are AWS's own")
            if len(key) > 128 or len(val) > 256:
                raise ValueError(f"{key}={val!r}: a tag key is at most 128 characters, a "
                                 "value at most 256")
        return value

    @field_validator("package_exclude", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def connection(self) -> AwsConnection:
        return AwsConnection(region=self.region, profile=self.profile,
                             endpoint_url=self.endpoint_url)

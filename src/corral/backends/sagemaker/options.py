"""Typed SageMaker options. Unknown keys and bad values are errors that say what is accepted.

Mappings take the short forms a command line can carry (``-o KEY=VALUE``, repeat for more):
``hyperparameters=lr=0.1``, ``tags=team=vision``; lists likewise: ``subnets=subnet-0abc``.
Durations are seconds or ``90m``, ``2h``, ``1d``. What SageMaker's own model checks (the
instance type, the role's ARN, S3 URIs, sizes) is checked again, with the whole request,
when the job is rendered (:func:`corral.backends.aws.validate.check_request`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from corral.backends.aws.session import AwsConnection
from corral.backends.typed_options import BackendOptions, key_value_pairs
from corral.spec import parse_duration, spec_error_from

S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?$"
ROLE_ARN = r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$"


class SageMakerOptions(BackendOptions):
    """What a platform engineer sets once (in a profile) and researchers never see."""

    backend_name = "sagemaker"

    # Which AWS answers (see AwsConnection): default region and credentials as boto3 finds them.
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None  # an emulator (moto) or a VPC endpoint
    # The IAM role SageMaker assumes for the job (reads the S3 prefix, writes the output).
    role_arn: str | None = Field(default=None, pattern=ROLE_ARN)
    instance_type: str = "ml.m5.xlarge"  # decides the CPUs, memory and GPUs of each node
    image: str | None = None  # default: the job's image (Python and corral installed there)
    python: str = "python3"  # the interpreter inside the image
    # Where the job's description and code go: <s3_prefix>/<job id>/ (job.json, code.tar.gz,
    # function.pkl), handed to every instance as the input channel "corral".
    s3_prefix: str | None = Field(default=None, pattern=S3_URI)
    output_path: str | None = Field(default=None, pattern=S3_URI)  # default <s3_prefix>/output
    volume_size_gb: int = Field(default=30, ge=1, le=16384)
    # How code reaches the instances: "package" ships the working directory through the
    # channel; "image" runs what the image holds, in image_workdir.
    code: Literal["package", "image"] = "package"
    image_workdir: str = Field(default="/opt/ml/code", pattern=r"^/")
    package_exclude: tuple[str, ...] = ()
    package_max_mb: float = Field(default=1024, gt=0)
    # Managed spot training: max_wait (time waiting for capacity plus running) defaults to
    # twice the job's run time limit; a checkpoint URI lets an interrupted job resume.
    use_spot: bool = False
    max_wait: int | None = Field(default=None, ge=1)
    checkpoint_s3_uri: str | None = Field(default=None, pattern=S3_URI)
    hyperparameters: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    subnets: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    # SageMaker's documentation: isolated containers still reach their peers in the training
    # cluster; corral reads only the channel's local files. Not tried on SageMaker here.
    enable_network_isolation: bool = False
    inter_container_encryption: bool = False
    keep_alive_seconds: int | None = Field(default=None, ge=0, le=21600)  # warm pool
    master_port: int = Field(default=29500, ge=1024, le=65535)
    # The least time between two looks at SageMaker (one DescribeTrainingJob per unfinished
    # job), shared by every corral process here.
    poll_seconds: float = Field(default=10.0, gt=0)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        try:
            AwsConnection(region=self.region, profile=self.profile,
                          endpoint_url=self.endpoint_url)
        except ValidationError as exc:
            raise spec_error_from(exc, AwsConnection, prefix="sagemaker.") from None

    @property
    def connection(self) -> AwsConnection:
        return AwsConnection(region=self.region, profile=self.profile,
                             endpoint_url=self.endpoint_url)

    @field_validator("hyperparameters", "tags", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> dict[str, str]:
        return key_value_pairs(value, "each entry")

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key == "corral-job-id" or key.lower().startswith("aws:"):
                raise ValueError(f"{key!r}: corral sets the tag corral-job-id, and keys "
                                 "starting with aws: are AWS's own")
        return value

    @field_validator("subnets", "security_group_ids", "package_exclude", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("max_wait", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else int(parse_duration(value))

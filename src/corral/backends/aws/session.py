"""boto3 clients for the AWS backends, imported when first needed, and AWS's errors turned
into corral's (one exception tree: the message says what failed and what to do)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from corral.errors import BackendError, MissingDependency

T = TypeVar("T")


class AwsConnection(BaseModel):
    """Which AWS answers: region, named profile, and an endpoint for an emulator (moto)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    profile: str | None = None
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/.*)?$")


def boto3_module() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise MissingDependency("boto3", extra="aws", purpose="by the AWS backends") from exc
    return boto3


def client(service: str, connection: AwsConnection) -> Any:
    """A boto3 client for ``service`` (``batch``, ``sagemaker``, ``logs``, ``s3``)."""
    boto3 = boto3_module()
    from botocore.config import Config

    try:
        session = boto3.session.Session(profile_name=connection.profile,
                                        region_name=connection.region)
        return session.client(service, endpoint_url=connection.endpoint_url,
                              config=Config(retries={"mode": "standard", "max_attempts": 5}))
    except Exception as exc:  # ProfileNotFound, NoRegionError...
        raise BackendError(f"cannot make an AWS {service} client: {exc} (set -o region=... "
                           "or AWS_DEFAULT_REGION, and credentials as boto3 finds them)"
                           ) from None


def error_code(exc: BaseException) -> str:
    """AWS's error code of a ClientError ('' for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""


def call(what: str, fn: Callable[..., T], /, error: type[BackendError] = BackendError,
         **params: Any) -> T:
    """``fn(**params)``; AWS's errors become ``error`` naming ``what`` was asked."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**params)
    except ClientError as exc:
        code = error_code(exc)
        message = (exc.response.get("Error") or {}).get("Message") or str(exc)
        hint = {"AccessDeniedException": " (the credentials lack this permission)",
                "UnrecognizedClientException": " (check the credentials)",
                "ExpiredTokenException": " (the credentials have expired)"}.get(code, "")
        raise error(f"{what}: AWS says {code}: {message}{hint}") from None
    except BotoCoreError as exc:  # no credentials, no endpoint, bad parameters...
        raise error(f"{what}: {type(exc).__name__}: {exc}") from None

"""The azure-batch SDK's client for an account, and its failures as corral's errors (what was
being done, what Azure said, what to do). The SDK is an optional extra, imported on first use
(``pip install 'corral[azure]'``)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from corral.errors import BackendError, MissingDependency, SpecError

from .options import AzureBatchOptions


def make_client(options: AzureBatchOptions) -> Any:
    """The SDK's client for the account the options (or the environment) name."""
    try:
        from azure.batch import BatchServiceClient
        from azure.batch.batch_auth import SharedKeyCredentials
    except ImportError:
        raise MissingDependency("azure-batch", extra="azure",
                                purpose="by the azure-batch backend") from None
    url, name, key = options.resolved_url(), options.resolved_name(), options.resolved_key()
    problems: list[tuple[str, Any, str]] = []
    if not url:
        problems.append(("azure-batch.account_url", None, "the account's URL: -o account_url="
                         "https://ACCOUNT.REGION.batch.azure.com or $AZURE_BATCH_ENDPOINT"))
    if not name:
        problems.append(("azure-batch.account_name", None, "the account's name: "
                         "-o account_name=NAME or $AZURE_BATCH_ACCOUNT"))
    if not key:
        problems.append(("azure-batch.account_key", None, "the account's shared key: "
                         "$AZURE_BATCH_ACCOUNT_KEY (az batch account keys list)"))
    else:
        try:
            base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            problems.append(("azure-batch.account_key", "(hidden)", "the key as Azure gives "
                             "it (base64)"))
    if problems:
        raise SpecError(problems, what="Azure Batch account")
    credentials = SharedKeyCredentials(name, key)  # type: ignore[no-untyped-call]
    client = BatchServiceClient(credentials, batch_url=url)  # type: ignore[no-untyped-call]
    client.config.connection.timeout = 60
    return client


def http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def error_code(exc: BaseException) -> str:
    error = getattr(exc, "error", None)
    return str(getattr(error, "code", "") or "")


def _message(exc: BaseException) -> str:
    error = getattr(exc, "error", None)
    message = getattr(error, "message", None)
    text = str(getattr(message, "value", None) or message or exc)
    details = [f"{d.key}: {d.value}" for d in getattr(error, "values", None) or []
               if getattr(d, "key", None)]
    return text.strip() + (f" ({'; '.join(details)})" if details else "")


HINTS = {
    "AuthenticationFailed": "check account_name and the key ($AZURE_BATCH_ACCOUNT_KEY)",
    "PoolNotFound": "-o pool names no pool of this account (az batch pool list)",
    "JobExists": "a job with this id exists already; submit again for a new id",
    "ActiveJobAndScheduleQuotaReached": "the account's quota of active jobs is reached: "
                                        "wait, or delete finished jobs",
    "RequestBodyTooLarge": "the request is over Azure's size limit (the job's spec travels "
                           "in it): shorten its arguments or environment",
}


def sdk_error(exc: BaseException, doing: str, url: str,
              error: type[BackendError] = BackendError) -> BackendError:
    """An SDK failure as corral's error: what was being done, what Azure said, what to do."""
    status, code = http_status(exc), error_code(exc)
    if code or status is not None:
        hint = HINTS.get(code) or (
            "the request was malformed: corral's validation let it through, please report it"
            if code in ("InvalidPropertyValue", "MissingRequiredProperty", "InvalidRequestBody",
                        "UnsupportedProperty", "InvalidHeaderValue")
            else "Azure Batch failed; try again later" if (status or 0) >= 500 else "")
        return error(f"Azure Batch could not {doing}: {status} {code}: {_message(exc)}"
                     + (f"; {hint}" if hint else ""))
    name = type(exc).__name__
    if name in ("ClientRequestError", "ConnectionError", "Timeout", "ReadTimeout",
                "ConnectTimeout") or isinstance(exc, OSError):
        return error(f"cannot reach Azure Batch at {url} to {doing}: {exc}; check account_url "
                     "($AZURE_BATCH_ENDPOINT) and the network")
    if name == "AuthenticationError":
        return error(f"Azure Batch refused corral's credentials to {doing}: {exc}")
    if name == "ValidationError":
        return error(f"the azure-batch SDK refused a request to {doing}: {exc}")
    return error(f"Azure Batch could not {doing}: {name}: {exc}")

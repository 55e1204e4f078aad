"""CloudWatch Logs, where AWS Batch and SageMaker keep each node's output: one log stream per
node (AWS Batch: the stream of ``jobId#N``; SageMaker: ``JOB/algo-N-<time>``).

``GetLogEvents`` answers a page at a time; the next page is asked for with the forward token
until the token comes back unchanged (the end, for now). A :class:`StreamFollower` keeps
that token, so following a running job asks only for what is new.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from corral.backends.aws.session import call, error_code

PAGE = 10_000  # events per page (CloudWatch's most)


class StreamFollower:
    """New lines of one log stream, from where the last poll stopped."""

    def __init__(self, logs: Any, group: str, stream: str) -> None:
        self.logs = logs
        self.group = group
        self.stream = stream
        self.token: str | None = None

    def poll(self) -> list[str]:
        """Every line added since the last poll (all pages); none while the stream does not
        exist yet."""
        from botocore.exceptions import ClientError

        found: list[str] = []
        while True:
            params: dict[str, Any] = {"logGroupName": self.group, "logStreamName": self.stream,
                                      "startFromHead": True, "limit": PAGE}
            if self.token:
                params["nextToken"] = self.token
            try:
                page = self.logs.get_log_events(**params)
            except ClientError as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    return found  # not written yet
                return [*found, f"corral: cannot read CloudWatch log stream "
                        f"{self.group}/{self.stream}: {error_code(exc)}"]
            found.extend(str(e.get("message", "")).rstrip("\n")
                         for e in page.get("events", []))
            token = page.get("nextForwardToken")
            if not token or token == self.token:
                return found
            self.token = token


def stream_lines(logs: Any, group: str, stream: str) -> list[str]:
    """Every line of a stream, page by page."""
    return StreamFollower(logs, group, stream).poll()


def tail(logs: Any, group: str, stream: str, lines: int = 40) -> list[str]:
    """The last ``lines`` lines of a stream (none if it does not exist)."""
    from botocore.exceptions import ClientError

    try:
        page = logs.get_log_events(logGroupName=group, logStreamName=stream,
                                   startFromHead=False, limit=max(1, lines))
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return []
        raise
    return [str(e.get("message", "")).rstrip("\n") for e in page.get("events", [])]


def streams_with_prefix(logs: Any, group: str, prefix: str) -> Iterator[str]:
    """The names of a group's streams that start with ``prefix`` (all pages); none while the
    group does not exist."""
    from botocore.exceptions import ClientError

    params: dict[str, Any] = {"logGroupName": group, "logStreamNamePrefix": prefix}
    while True:
        try:
            page = logs.describe_log_streams(**params)
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return
            page = call(f"list CloudWatch log streams {group}/{prefix}*",  # says why
                        logs.describe_log_streams, **params)
        for stream in page.get("logStreams", []):
            yield str(stream["logStreamName"])
        if not page.get("nextToken"):
            return
        params["nextToken"] = page["nextToken"]

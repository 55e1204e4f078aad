"""Typed GCP Batch options. Unknown keys and bad values are errors that say what is accepted.

Each option is a field of GCP Batch's ``Job`` (``google.cloud.batch.v1``) or a choice of
corral's (how code reaches the nodes, the interpreter in the image, the rendezvous port).
Mappings and lists take the short forms a command line carries (``-o labels=team=vision``,
``-o allowed_locations=zones/us-central1-a``; repeat for more).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from corral.backends.typed_options import BackendOptions, key_value_pairs

# GCP label rules: keys start with a lowercase letter; keys and values hold lowercase letters,
# digits, "-" and "_", at most 63 characters; values may be empty.
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
RESERVED_LABEL_PREFIX = "goog"
_NAME = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"  # projects' ids, regions, machine types...
_PROJECT = r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$"  # GCP project ids: 6 to 30 characters
_REGION = r"^[a-z]+-[a-z]+[0-9]+$"  # us-central1, europe-west4
_LOCATION = re.compile(r"^(regions/[a-z]+-[a-z]+[0-9]+|zones/[a-z]+-[a-z]+[0-9]+-[a-z])$")
_NETWORK = r"^(projects/[a-z][a-z0-9-]*/)?global/networks/[a-z]([-a-z0-9]*[a-z0-9])?$"
_SUBNETWORK = (r"^(projects/[a-z][a-z0-9-]*/)?regions/[a-z]+-[a-z]+[0-9]+/subnetworks/"
               r"[a-z]([-a-z0-9]*[a-z0-9])?$")
_EMAIL = r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$"


class GcpBatchOptions(BackendOptions):
    """What a platform engineer sets once (in a profile) and researchers never see."""

    backend_name = "gcp-batch"

    # Where: the job is created under projects/PROJECT/locations/LOCATION (a region).
    project: str | None = Field(default=None, pattern=_PROJECT)
    location: str | None = Field(default=None, pattern=_REGION)
    allowed_locations: tuple[str, ...] = ()  # regions/R or zones/Z where VMs may be made
    # What: the container image (default: the job's), with Python and corral installed.
    image: str | None = None
    python: str = Field(default="python3", min_length=1)  # the interpreter in the image
    container_options: str | None = None  # extra `docker run` options ("--shm-size=16g")
    # How code reaches the nodes: "image" runs what the image holds, in image_workdir;
    # "package" packs the working directory at submit, uploads it to package_store, and
    # every node fetches it (fsspec; the image needs gcsfs) and unpacks it.
    code: Literal["image", "package"] = "image"
    image_workdir: str = Field(default="/workspace", pattern=r"^/")
    package_store: str | None = Field(default=None, pattern=r"^gs://[a-z0-9][a-z0-9._-]*\S*$")
    package_exclude: tuple[str, ...] = ()
    package_max_mb: float = Field(default=1024, gt=0)
    # The VMs: one per node.
    machine_type: str | None = Field(default=None, pattern=_NAME)
    provisioning_model: Literal["STANDARD", "SPOT"] = "STANDARD"
    accelerator_type: str | None = Field(default=None, pattern=_NAME)  # nvidia-l4...
    install_gpu_drivers: bool = True  # with GPUs: Batch installs the driver on each VM
    service_account: str | None = Field(default=None, pattern=_EMAIL)
    network: str | None = Field(default=None, pattern=_NETWORK)
    subnetwork: str | None = Field(default=None, pattern=_SUBNETWORK)
    no_external_ip: bool = False
    labels: dict[str, str] = Field(default_factory=dict)
    priority: int | None = Field(default=None, ge=0, le=99)  # default: the job's priority
    max_retry_count: int = Field(default=0, ge=0, le=10)  # per task (= per node)
    logs: Literal["CLOUD_LOGGING", "NONE"] = "CLOUD_LOGGING"
    master_port: int = Field(default=29500, ge=1024, le=65535)
    # The least time between two looks at GCP Batch, shared by every corral process here.
    poll_seconds: float = Field(default=5.0, gt=0)
    # Another endpoint than https://batch.googleapis.com: a regional one, or an emulator.
    # A plain http:// endpoint is sent no credentials (anonymous: tests and emulators only).
    api_endpoint: str | None = Field(default=None, pattern=r"^https?://[A-Za-z0-9.-]+(:\d+)?/?$")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> dict[str, str]:
        found = key_value_pairs(value, "each label")
        for key, val in found.items():
            if not LABEL_KEY.match(key) or key.startswith(RESERVED_LABEL_PREFIX):
                raise ValueError(f"{key!r} is not a valid GCP label key: a lowercase letter, "
                                 "then at most 62 lowercase letters, digits, - and _ (not "
                                 "starting with 'goog')")
            if not LABEL_VALUE.match(val):
                raise ValueError(f"{key}={val!r}: a GCP label value is at most 63 lowercase "
                                 "letters, digits, - and _")
        return found

    @field_validator("allowed_locations", mode="before")
    @classmethod
    def _locations(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else list(value or ())
        for item in items:
            if not isinstance(item, str) or not _LOCATION.match(item):
                raise ValueError(f"{item!r}: write regions/REGION or zones/ZONE "
                                 "(e.g. zones/us-central1-a)")
        return items

    @field_validator("package_exclude", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

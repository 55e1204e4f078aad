"""Typed Kubernetes options. Unknown keys and bad values are errors that say what is accepted.

List-valued options take the short forms a command line can carry (``-o KEY=VALUE``, repeat
for more): ``node_selector=disktype=ssd``, ``tolerations=gpu=true:NoSchedule``,
``volumes=pvc:data:/data``, ``labels=team=vision``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.backends.typed_options import BackendOptions, key_value_pairs

Flavour = Literal["volcano", "jobset", "job"]
# RFC 1123 label (namespaces, queue names, service accounts...)
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*"
                        r"[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$"
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
VOLUME_KINDS = ("pvc", "secret", "configmap", "hostpath", "emptydir")


class Toleration(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @classmethod
    def parse(cls, text: str) -> Toleration:
        """kubectl's taint syntax: ``key=value:Effect``, ``key:Effect``, ``key``, ``:Effect``
        (with no key: tolerate every taint of that effect)."""
        head, _, effect = text.partition(":")
        if effect and effect not in _EFFECTS:
            raise ValueError(f"{text!r}: the effect is one of {', '.join(_EFFECTS)}")
        key, sep, value = head.partition("=")
        if key and not _QUALIFIED.match(key):
            raise ValueError(f"{text!r}: {key!r} is not a valid key")
        if sep and not _LABEL_VALUE.match(value):
            raise ValueError(f"{text!r}: {value!r} is not a valid value")
        return cls(key=key or None, operator="Equal" if sep else "Exists",
                   value=value if sep else None, effect=effect or None)  # type: ignore[arg-type]

    def manifest(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Volume(BaseModel):
    """``KIND:NAME:MOUNT_PATH[:ro]``: pvc, secret, configmap, hostpath (NAME is the host path,
    written ``hostpath:/srv/data:/data``), emptydir (NAME is the volume's name)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["pvc", "secret", "configmap", "hostpath", "emptydir"]
    source: str
    mount_path: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> Volume:
        parts = text.split(":")
        read_only = parts[-1] == "ro"
        if read_only:
            parts = parts[:-1]
        if len(parts) != 3 or parts[0] not in VOLUME_KINDS:
            raise ValueError(f"{text!r}: write KIND:NAME:MOUNT_PATH[:ro] with KIND one of "
                             + ", ".join(VOLUME_KINDS) + " (e.g. pvc:data:/data)")
        kind, source, mount = parts
        if not mount.startswith("/"):
            raise ValueError(f"{text!r}: the mount path must be absolute")
        if kind == "hostpath" and not source.startswith("/"):
            raise ValueError(f"{text!r}: a host path must be absolute")
        if kind != "hostpath" and not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", source):
            raise ValueError(f"{text!r}: {source!r} is not a valid object name")
        return cls(kind=kind, source=source, mount_path=mount,  # type: ignore[arg-type]
                   read_only=read_only)


class KubernetesOptions(BackendOptions):
    """What a platform engineer sets once (in a profile) and researchers never see."""

    backend_name = "kubernetes"

    flavour: Flavour = "volcano"
    kubeconfig: str | None = None  # default: $KUBECONFIG, then ~/.kube/config
    context: str | None = None
    namespace: str = Field(default="default", pattern=DNS_LABEL, max_length=63)
    image: str | None = None  # default: the job's image
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: tuple[str, ...] = ()
    python: str = "python3"  # the interpreter inside the image (corral installed there)
    # How code reaches the pods: "package" ships the working directory with the job (a
    # ConfigMap, at most package_max_kb); "image" runs what the image holds, in image_workdir.
    code: Literal["package", "image"] = "package"
    image_workdir: str = "/workspace"
    package_max_kb: int = Field(default=900, gt=0, le=1000)
    package_exclude: tuple[str, ...] = ()
    # Object storage for the code package instead of the ConfigMap (an fsspec URL prefix such
    # as s3://bucket/corral; the pods fetch it with fsspec and their own credentials).
    package_store: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9+.-]*://\S+$")
    package_store_max_mb: float = Field(default=1024, gt=0)
    queue: str | None = Field(default=None, pattern=DNS_LABEL)  # Volcano queue
    kueue_queue: str | None = Field(default=None, pattern=DNS_LABEL)  # Kueue LocalQueue
    priority_class: str | None = Field(default=None, pattern=DNS_LABEL)
    service_account: str | None = Field(default=None, pattern=DNS_LABEL)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    volumes: tuple[Volume, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    shm_size: str | None = Field(default=None, pattern=_QUANTITY)  # /dev/shm's size limit
    master_port: int = Field(default=29500, ge=1024, le=65535)
    termination_grace: int = Field(default=30, ge=0, le=3600)
    # The least time between two looks at the cluster, shared by every corral process here.
    poll_seconds: float = Field(default=1.0, gt=0)

    @field_validator("node_selector", "labels", "annotations", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> dict[str, str]:
        found = key_value_pairs(value, "each entry")
        for key in found:
            if not _QUALIFIED.match(key):
                raise ValueError(f"{key!r} is not a valid key (e.g. example.com/team)")
        return found

    @field_validator("node_selector", "labels")
    @classmethod
    def _label_values(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if len(val) > 63 or not _LABEL_VALUE.match(val):
                raise ValueError(f"{key}={val!r}: a label value is at most 63 letters, digits "
                                 "and -_. (starting and ending alphanumeric)")
        return value

    @field_validator("tolerations", mode="before")
    @classmethod
    def _tolerations(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str | dict) else list(value or ())
        return [Toleration.parse(v) if isinstance(v, str) else v for v in items]

    @field_validator("volumes", mode="before")
    @classmethod
    def _volumes(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str | dict) else list(value or ())
        return [Volume.parse(v) if isinstance(v, str) else v for v in items]

    @field_validator("image_pull_secrets", "package_exclude", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

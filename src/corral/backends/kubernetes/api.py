"""The one door to the API server: plain-dict objects in and out, errors that say what to do.

Built on the official ``kubernetes`` client (imported when a cluster is first asked
something), used through its REST layer: every kind is a path, so Volcano's, JobSet's and
Kueue's objects are handled exactly as Jobs and Pods are, and nothing is converted into or
out of the client's model classes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from corral.errors import BackendError, MissingDependency

REQUEST_TIMEOUT = 20.0


@dataclass(frozen=True)
class Kind:
    api_version: str
    plural: str
    namespaced: bool = True
    installed_by: str = ""  # what a 404 on the kind itself means

    def path(self, namespace: str | None, name: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        scope = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        return f"{prefix}{scope}/{self.plural}" + (f"/{name}" if name else "")


KINDS: dict[tuple[str, str], Kind] = {
    ("v1", "ConfigMap"): Kind("v1", "configmaps"),
    ("v1", "Service"): Kind("v1", "services"),
    ("v1", "Pod"): Kind("v1", "pods"),
    ("v1", "Event"): Kind("v1", "events"),
    ("v1", "Namespace"): Kind("v1", "namespaces", namespaced=False),
    ("batch/v1", "Job"): Kind("batch/v1", "jobs"),
    ("batch.volcano.sh/v1alpha1", "Job"): Kind(
        "batch.volcano.sh/v1alpha1", "jobs", installed_by="Volcano"),
    ("scheduling.volcano.sh/v1beta1", "PodGroup"): Kind(
        "scheduling.volcano.sh/v1beta1", "podgroups", installed_by="Volcano"),
    ("scheduling.volcano.sh/v1beta1", "Queue"): Kind(
        "scheduling.volcano.sh/v1beta1", "queues", namespaced=False, installed_by="Volcano"),
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): Kind(
        "jobset.x-k8s.io/v1alpha2", "jobsets", installed_by="JobSet"),
    ("kueue.x-k8s.io/v1beta2", "Workload"): Kind(
        "kueue.x-k8s.io/v1beta2", "workloads", installed_by="Kueue"),
    ("kueue.x-k8s.io/v1beta2", "LocalQueue"): Kind(
        "kueue.x-k8s.io/v1beta2", "localqueues", installed_by="Kueue"),
    ("kueue.x-k8s.io/v1beta2", "ClusterQueue"): Kind(
        "kueue.x-k8s.io/v1beta2", "clusterqueues", namespaced=False, installed_by="Kueue"),
    ("kueue.x-k8s.io/v1beta2", "ResourceFlavor"): Kind(
        "kueue.x-k8s.io/v1beta2", "resourceflavors", namespaced=False, installed_by="Kueue"),
}


def kind_of(manifest: dict[str, Any]) -> Kind:
    return KINDS[(manifest["apiVersion"], manifest["kind"])]


class ApiError(BackendError):
    """The API server answered with an error status."""

    def __init__(self, message: str, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def resolve_kubeconfig(path: str | None) -> str:
    """The kubeconfig file in use: the option, $KUBECONFIG (its first file), ~/.kube/config."""
    if path:
        return os.path.abspath(os.path.expanduser(path))
    env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return os.path.abspath(os.path.expanduser(env or "~/.kube/config"))


class KubeApi:
    """A connection to one API server (a kubeconfig file and context)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        self.kubeconfig = resolve_kubeconfig(kubeconfig)
        self.context = context
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                from kubernetes import config
            except ImportError as exc:
                raise MissingDependency("kubernetes", purpose="by the kubernetes backend",
                                        extra="kubernetes") from exc
            if not os.path.exists(self.kubeconfig):
                raise BackendError(f"no kubeconfig at {self.kubeconfig}: set KUBECONFIG or "
                                   "-o kubeconfig=PATH")
            try:
                self._client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=self.kubeconfig, context=self.context)
            except Exception as exc:  # ConfigException and friends: a bad file or context
                raise BackendError(f"cannot use kubeconfig {self.kubeconfig}"
                                   + (f" (context {self.context!r})" if self.context else "")
                                   + f": {exc}") from None
        return self._client

    @property
    def host(self) -> str:
        return str(self.client.configuration.host)

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, Any] | None = None, what: str = "",
                content_type: str = "application/json", stream: bool = False,
                timeout: float | None = REQUEST_TIMEOUT) -> Any:
        """One call; the decoded JSON answer (the raw response with ``stream``)."""
        client = self.client
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json", "Content-Type": content_type}
        params = list((query or {}).items())
        wait = None if stream else timeout
        try:
            if hasattr(client, "param_serialize"):  # kubernetes >= 34: generated anew
                method_, url, headers_, body_, post = client.param_serialize(
                    method, path, query_params=params, header_params=headers, body=body,
                    auth_settings=["BearerToken"])
                response = client.call_api(method_, url, header_params=headers_, body=body_,
                                           post_params=post, _request_timeout=wait).response
            else:
                response = client.call_api(
                    path, method, query_params=params, header_params=headers, body=body,
                    auth_settings=["BearerToken"], _preload_content=False,
                    _return_http_data_only=True, _request_timeout=wait)
        except ApiException as exc:
            raise self._error(int(exc.status or 0), str(exc.reason or ""), exc.body,
                              method, path, what) from None
        except Exception as exc:  # urllib3: connection refused, TLS, timeouts
            raise BackendError(f"cannot reach the Kubernetes API server at {self.host} "
                               f"({type(exc).__name__}: {str(exc)[:300]}); check that the "
                               f"cluster of {self.kubeconfig} is up") from None
        if response.status >= 400:
            data = response.data
            response.release_conn()
            raise self._error(response.status, str(response.reason or ""), data, method, path,
                              what)
        if stream:
            return response
        data = response.data
        return json.loads(data) if data else None

    def _error(self, status: int, http_reason: str, raw: Any, method: str, path: str,
               what: str) -> ApiError:
        try:
            body = json.loads(raw or "{}")
        except ValueError:
            body = {}
        message = str(body.get("message") or http_reason or "").strip()
        reason = str(body.get("reason") or "")
        doing = what or f"{method} {path}"
        user = f"the credentials of {self.kubeconfig}"
        if status == 401:
            text = (f"{doing}: the API server at {self.host} does not accept {user} "
                    f"(401 Unauthorized); log in again or fix the token")
        elif status == 403:
            text = f"{doing}: not allowed (403 Forbidden): {message}; ask for RBAC rights"
        elif status == 404:
            text = f"{doing}: not found (404): {message}"
        elif status == 409:
            text = f"{doing}: already exists or changed meanwhile (409 Conflict): {message}"
        elif status == 422:
            causes = body.get("details", {}).get("causes") or []
            listed = "; ".join(f"{c.get('field', '?')}: {c.get('message', '')}"
                               for c in causes[:8])
            text = f"{doing}: the API server rejected it (422 Invalid): {listed or message}"
        else:
            text = f"{doing}: the API server answered {status} {http_reason}: {message}"
        return ApiError(text, status, reason)

    # -- verbs ----------------------------------------------------------------------------

    def create(self, manifest: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        kind = kind_of(manifest)
        namespace = manifest["metadata"].get("namespace")
        query: dict[str, Any] = {"fieldValidation": "Strict"}
        if dry_run:
            query["dryRun"] = "All"
        what = f"creating {manifest['kind']} {manifest['metadata']['name']}"
        try:
            created: dict[str, Any] = self.request("POST", kind.path(namespace), manifest,
                                                   query, what)
        except ApiError as exc:
            raise self._missing_kind(exc, kind, manifest["kind"]) from None
        return created

    def _missing_kind(self, exc: ApiError, kind: Kind, name: str) -> ApiError:
        """A 404 on creation means the kind itself is unknown: say what installs it."""
        if exc.status == 404 and kind.installed_by and "namespaces" not in str(exc):
            return ApiError(f"the cluster at {self.host} has no {kind.api_version} {name}: "
                            f"is {kind.installed_by} installed? (or choose another flavour: "
                            "-o flavour=volcano|jobset|job)", 404, exc.reason)
        return exc

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request("GET", kind.path(namespace, name),
                                                 what=f"reading {kind.plural}/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def list(self, kind: Kind, namespace: str | None, selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        query = {}
        if selector:
            query["labelSelector"] = selector
        if field_selector:
            query["fieldSelector"] = field_selector
        try:
            found = self.request("GET", kind.path(namespace), query=query,
                                 what=f"listing {kind.plural}")
        except ApiError as exc:
            raise self._missing_kind(exc, kind, kind.plural) from None
        items: list[dict[str, Any]] = found.get("items", [])
        return items

    def delete(self, kind: Kind, namespace: str | None, name: str,
               propagation: str = "Foreground") -> bool:
        """True if it was deleted now, False if it was not there (idempotent)."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1",
                "propagationPolicy": propagation}
        try:
            self.request("DELETE", kind.path(namespace, name), body,
                         what=f"deleting {kind.plural}/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def patch(self, kind: Kind, namespace: str | None, name: str,
              patch: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = self.request(
            "PATCH", kind.path(namespace, name), patch, what=f"updating {kind.plural}/{name}",
            content_type="application/merge-patch+json")
        return found

    def log_lines(self, namespace: str, pod: str, follow: bool = False,
                  tail: int | None = None) -> Iterator[str]:
        """A pod's log, line by line (until the container ends with ``follow``)."""
        query: dict[str, Any] = {"container": "main"}
        if follow:
            query["follow"] = "true"
        if tail is not None:
            query["tailLines"] = str(tail)
        response = self.request("GET", KINDS[("v1", "Pod")].path(namespace, pod) + "/log",
                                query=query, what=f"reading the log of pod {pod}",
                                stream=True)
        partial = b""
        try:
            for chunk in response.stream(4096, decode_content=True):
                partial += chunk
                *lines, partial = partial.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", errors="replace")
            if partial:
                yield partial.decode("utf-8", errors="replace")
        finally:
            response.release_conn()

"""The dashboard's HTTP server: static pages shipped in the package, and a JSON API over the
job store. Standard library only (``http.server``), one thread per request.

Every request must carry the access token: ``?token=...`` (the printed URL), the
``X-Corral-Token`` header, or the cookie set when the URL was opened (HttpOnly,
SameSite=Strict, so the page's scripts and styles load and other sites cannot use it);
without it the answer is 403 and nothing else. It binds 127.0.0.1 unless another
address is asked for explicitly.

API (all GET unless said):
  /api/jobs[?state=&backend=&user=&q=]  the jobs, newest first
  /api/jobs/ID                          the job's status, ranks and history
  /api/jobs/ID/logs?since=JSON[&rank=R] new log lines, labelled (since: the last "next")
  /api/jobs/ID/card                     the job's card (HTML, as ``corral card``)
  POST /api/jobs/ID/cancel              stop the job
"""

from __future__ import annotations

import json
import secrets
import threading
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from corral.errors import CorralError

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def list_jobs(query: dict[str, str]) -> list[dict[str, Any]]:
    from corral.cli.jobs import refresh_all
    from corral.store import open_store

    store = open_store()
    refresh_all(store.jobs())
    rows: list[dict[str, Any]] = []
    for record in store.jobs():
        if query.get("state") and record.state.value != query["state"]:
            continue
        if query.get("backend") and record.backend != query["backend"]:
            continue
        if query.get("user") and record.user != query["user"]:
            continue
        if query.get("q") and query["q"].lower() not in (record.name + record.id).lower():
            continue
        rows.append({"id": record.id, "name": record.name, "state": record.state.value,
                     "reason": record.reason, "backend": record.backend, "user": record.user,
                     "nodes": record.nodes, "procs_per_node": record.procs_per_node,
                     "launcher": record.launcher, "created": record.created,
                     "started": record.started, "finished": record.finished})
    rows.sort(key=lambda row: row["created"], reverse=True)
    return rows


def job_detail(job_id: str) -> dict[str, Any]:
    from corral.cli.jobs import backend_of, finished_status
    from corral.store import open_store

    status = finished_status(job_id) or backend_of(job_id).describe(job_id)
    data = status.to_json()
    data["summary"] = status.summary()
    data["events"] = [event.__dict__ for event in open_store().events(job_id)]
    return data


def job_logs(job_id: str, since: dict[str, int], rank: int | None) -> dict[str, Any]:
    """The job's new log lines: ``since`` counts the lines already shown of each log file
    (as the last answer's ``next`` gave them), so that lines are never shown twice."""
    from corral.cli.jobs import backend_of

    backend = backend_of(job_id)
    record = backend.store.get(job_id)
    counts: dict[str, int] = {}
    lines = []
    for source, line in backend.logs(job_id, rank=rank):
        counts[source.filename] = counts.get(source.filename, 0) + 1
        if counts[source.filename] > since.get(source.filename, 0):
            lines.append(f"[{source.label(record.procs_per_node)}] {line}")
    return {"lines": lines, "next": counts, "state": record.state.value}


def cancel_job(job_id: str) -> dict[str, Any]:
    from corral.cli.jobs import backend_of

    status = backend_of(job_id).cancel(job_id)
    return {"id": job_id, "state": status.state.value}


def job_card(job_id: str) -> str:
    from corral.card import collect, plotly_bundle, render_card

    return render_card(collect(job_id), plotly_bundle())


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    @property
    def cookie_name(self) -> str:
        return f"corral_ui_{self.server.server_address[1]}"

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        if self.set_cookie:
            self.send_header("Set-Cookie", f"{self.cookie_name}={self.server.token}; "
                             "HttpOnly; SameSite=Strict; Path=/")
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, data: Any) -> None:
        self._send(code, json.dumps(data, default=str).encode(), "application/json")

    def _authorized(self, query: dict[str, str]) -> bool:
        cookies = SimpleCookie(self.headers.get("Cookie") or "")
        jar = cookies[self.cookie_name].value if self.cookie_name in cookies else ""
        token = self.server.token.encode()
        if secrets.compare_digest(query.get("token", "").encode(), token):
            self.set_cookie = jar != self.server.token
            return True
        given = self.headers.get("X-Corral-Token") or jar
        return secrets.compare_digest(given.encode(), token)

    def _route(self, method: str) -> None:
        self.set_cookie = False
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if not self._authorized(query):
            self._json(HTTPStatus.FORBIDDEN, {"error": "missing or wrong access token: open "
                                              "the URL that corral ui printed"})
            return
        path = parts.path
        try:
            if path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "text/plain")
            elif method == "GET" and path in STATIC:
                name, kind = STATIC[path]
                body = resources.files("corral.ui").joinpath("static").joinpath(name).read_bytes()
                self._send(HTTPStatus.OK, body, kind)
            elif method == "GET" and path == "/api/jobs":
                self._json(HTTPStatus.OK, list_jobs(query))
            elif path.startswith("/api/jobs/"):
                self._job(method, path[len("/api/jobs/"):].split("/"), query)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}"})
        except (ValueError, AttributeError) as exc:  # a malformed parameter
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"bad request: {exc}"})
        except KeyError as exc:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such job: {exc}"})
        except CorralError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})

    def _job(self, method: str, parts: list[str], query: dict[str, str]) -> None:
        job_id, action = parts[0], "/".join(parts[1:])
        if method == "GET" and action == "":
            self._json(HTTPStatus.OK, job_detail(job_id))
        elif method == "GET" and action == "logs":
            rank = int(query["rank"]) if query.get("rank") else None
            since = json.loads(query.get("since") or "{}")
            self._json(HTTPStatus.OK, job_logs(job_id, since, rank))
        elif method == "GET" and action == "card":
            self._send(HTTPStatus.OK, job_card(job_id).encode(), "text/html; charset=utf-8")
        elif method == "POST" and action == "cancel":
            self._json(HTTPStatus.OK, cancel_job(job_id))
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such action: {method} {action}"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._route("POST")


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, token: str | None = None,
                 verbose: bool = False) -> None:
        super().__init__((host, port), Handler)
        self.token = token or secrets.token_urlsafe(24)
        self.verbose = verbose

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/?token={self.token}"

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="corral-ui", daemon=True)
        thread.start()
        return thread

"""A remote shell between the pods of one job, for ``mpirun`` on Kubernetes (no sshd).

Open MPI's ``mpirun`` starts its daemon on every other host through a remote shell, ``ssh
HOST COMMAND`` by default; corral's pods run no sshd, so ``mpirun`` is told to use this
instead (``--mca plm_rsh_agent "python3 -m corral.runtime.rsh"``):

* ``python3 -m corral.runtime.rsh HOST COMMAND...`` (the client, in rank 0's pod) connects to
  HOST's pod, sends the job's token and the command, copies what the command prints to its
  own stdout and stderr, and exits with the command's exit code, as ``ssh`` would;
* :func:`serve` (in every other pod, run by :mod:`corral.runtime.pod`) accepts such a
  connection from a peer that knows the token, runs the command with ``sh -c`` in the pod's
  environment, and returns once the command it ran has ended.

The token is the job's own (rendered into its plan, readable by whoever may read the job's
ConfigMap, as an MPI operator's ssh keys are by whoever may read its Secret). Standard
library only. Frames: one JSON line from the client; then from the server ``O``/``E`` +
4-byte length + bytes of output, and ``X`` + 4-byte signed exit code at the end.
"""

from __future__ import annotations

import hmac
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from typing import IO

TOKEN_ENV = "CORRAL_RSH_TOKEN"
PORT_ENV = "CORRAL_RSH_PORT"
CONNECT_TIMEOUT = 60.0  # the peer's pod may still be starting


def _frame(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("!I", len(data)) + data


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the remote shell closed the connection")
        data += chunk
    return data


def _connect(host: str, port: int) -> socket.socket:
    """Connect, retrying while the peer's pod starts (its name may not resolve yet)."""
    import time

    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        try:
            return socket.create_connection((host, port), timeout=10)
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ConnectionError(f"cannot reach {host}:{port}: {exc}") from None
            time.sleep(0.2)


def client(argv: list[str]) -> int:
    """``rsh HOST COMMAND...``: run COMMAND in HOST's pod; its output and exit code here."""
    args = [a for a in argv if a not in ("-x", "-T")]  # ssh options Open MPI may add
    if len(args) < 2:
        print("usage: python -m corral.runtime.rsh HOST COMMAND...", file=sys.stderr)
        return 255
    host, command = args[0], " ".join(args[1:])
    token = os.environ.get(TOKEN_ENV, "")
    port = int(os.environ.get(PORT_ENV, "29501"))
    try:
        sock = _connect(host, port)
        sock.settimeout(None)
        sock.sendall(json.dumps({"token": token, "command": command}).encode() + b"\n")
        outs = {b"O": sys.stdout.buffer, b"E": sys.stderr.buffer}
        while True:
            kind = _read_exact(sock, 1)
            (size,) = struct.unpack("!I", _read_exact(sock, 4))
            if kind == b"X":
                return int(size if size < 2**31 else size - 2**32)
            out = outs.get(kind, sys.stderr.buffer)
            out.write(_read_exact(sock, size))
            out.flush()
    except (OSError, ConnectionError, ValueError) as exc:
        print(f"corral rsh: {host}: {exc}", file=sys.stderr)
        return 255


def _pump(stream: IO[bytes], kind: bytes, sock: socket.socket, lock: threading.Lock) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
        with lock:
            sock.sendall(_frame(kind, chunk))


running: list[subprocess.Popen[bytes]] = []  # the command being served (for a SIGTERM)


def terminate() -> None:
    """Pass a SIGTERM on to the command being served, if any."""
    for proc in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)


def _run(conn: socket.socket, command: str, env: dict[str, str]) -> int:
    proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    running.append(proc)
    lock = threading.Lock()
    pumps = [threading.Thread(target=_pump, args=(stream, kind, conn, lock), daemon=True)
             for stream, kind in ((proc.stdout, b"O"), (proc.stderr, b"E"))]
    for pump in pumps:
        pump.start()
    code = proc.wait()
    for pump in pumps:
        pump.join()
    code = code if code >= 0 else 128 - code
    with lock:
        conn.sendall(b"X" + struct.pack("!i", code))
    return code


def serve(token: str, port: int, stop: threading.Event | None = None,
          env: dict[str, str] | None = None) -> int:
    """Run the first command that a peer with the token sends; its exit code.

    Connections without the token are refused and the server keeps waiting. ``stop`` (set
    by a SIGTERM) ends the wait with 128 + SIGTERM.
    """
    with socket.create_server(("", port), reuse_port=False) as server:
        server.settimeout(0.5)
        while not (stop is not None and stop.is_set()):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                try:
                    line = conn.makefile("rb").readline(1 << 20)
                    request = json.loads(line)
                except (OSError, ValueError):
                    continue
                if not hmac.compare_digest(str(request.get("token", "")), token):
                    conn.sendall(_frame(b"E", b"corral rsh: wrong token\n") + b"X"
                                 + struct.pack("!i", 255))
                    continue
                conn.settimeout(None)
                return _run(conn, str(request.get("command", "")), env or dict(os.environ))
        return 128 + signal.SIGTERM


def main(argv: list[str] | None = None) -> int:
    return client(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

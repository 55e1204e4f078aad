"""``corral ui``: the dashboard, on 127.0.0.1 with an access token in its URL."""

from __future__ import annotations

import click

from corral.errors import CorralError


@click.command("ui")
@click.option("--port", type=int, default=0, show_default=True,
              help="Port to listen on (0: any free one).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback must be asked for here.")
@click.option("--verbose", is_flag=True, help="Log every request to stderr.")
def ui_command(port: int, host: str, verbose: bool) -> int:
    """Serve a web dashboard of jobs, logs and plots on this machine, behind a token."""
    from corral.ui.server import LOOPBACK, DashboardServer

    try:
        server = DashboardServer(host, port, verbose=verbose)
    except OSError as exc:
        raise CorralError(f"corral ui cannot listen on {host}:{port}: {exc.strerror}") from None
    if host not in LOOPBACK:
        click.echo(f"corral ui: listening on {host}, reachable from other machines; anyone "
                   "with the URL's token can see and cancel your jobs", err=True)
    click.echo(f"corral ui: {server.url}", err=False)
    click.echo("(Ctrl-C stops it)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0

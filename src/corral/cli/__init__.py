"""The ``corral`` command. One module per subcommand; errors never show a traceback."""

from __future__ import annotations

import os
import sys

import click

from corral.cli.jobs import cancel_command, logs_command, ps_command, status_command, wait_command
from corral.cli.run import run_command
from corral.errors import CorralError, JobFailed


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="corral")
def cli() -> None:
    """Run training code as a batch job or a multi-node gang, here or on a cluster."""


cli.add_command(run_command)
cli.add_command(ps_command)
cli.add_command(status_command)
cli.add_command(logs_command)
cli.add_command(cancel_command)
cli.add_command(wait_command)


CORRAL_FAILED = 125  # corral's own failure (bad input, submission, engine), as `docker run`


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (README, "Exit codes")."""
    try:
        result = cli.main(args=argv, prog_name="corral", standalone_mode=False)
    except JobFailed as exc:
        click.echo(f"corral: error: {exc}", err=True)
        return exc.status.returncode
    except CorralError as exc:
        click.echo(f"corral: error: {exc}", err=True)
        return CORRAL_FAILED
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("corral: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return CORRAL_FAILED
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    return int(result or 0)


def entry() -> None:
    """The console script: run, flush, and leave without tearing down every module."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()

"""The ``corral`` command. One module per subcommand; errors never show a traceback.

A subcommand's module is imported only when that subcommand runs: ``corral ps`` does not
pay for ``corral run``'s imports. ``corral --help`` lists the commands from the table
below without importing any of them (tests/test_startup.py checks the table against the
commands themselves).
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from corral.errors import CorralError, JobFailed

# name -> (module, attribute, the first paragraph of the command's docstring)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("corral.cli.run", "run_command", "Run SCRIPT_OR_CMD [-- ARGS...] as a job."),
    "ps": ("corral.cli.jobs", "ps_command",
           "List jobs (unfinished ones; -a for all), newest first."),
    "status": ("corral.cli.jobs", "status_command",
               "Show a job's state, its ranks, its first failure and its history."),
    "logs": ("corral.cli.jobs", "logs_command",
             "Print a job's output, every line prefixed with its node and rank."),
    "metrics": ("corral.cli.metrics", "metrics_command",
                "Show what a job's ranks logged with corral.log (the last of each metric, or "
                "--all)."),
    "profile": ("corral.cli.profile", "profile_command",
                "Show each rank's CPU, memory and GPU use, as its node agent sampled it."),
    "card": ("corral.cli.card", "card_command",
             "Write a job's card: spec, timeline, failure and plots, in one offline HTML file."),
    "ui": ("corral.cli.ui", "ui_command",
           "Serve a web dashboard of jobs, logs and plots on this machine, behind a token."),
    "cancel": ("corral.cli.jobs", "cancel_command",
               "Stop every rank of each job (a finished job is left as it is)."),
    "wait": ("corral.cli.jobs", "wait_command",
             "Wait for jobs to end; exit 0 only if all succeeded."),
    "submit": ("corral.cli.run", "submit_command",
               "Queue SCRIPT_OR_CMD [-- ARGS...]; print its job id (one per array task) at "
               "once."),
    "queue": ("corral.cli.queue", "queue_group",
              "The local queue: its queues (weights, limits, usage) and each user's fair "
              "share."),
    "nodes": ("corral.cli.queue", "nodes_command",
              "This machine's CPUs, memory and GPUs, and what queued jobs hold of them."),
    "hold": ("corral.cli.queue", "hold_command",
             "Keep waiting jobs from starting (reason Held) until `corral release`."),
    "release": ("corral.cli.queue", "release_command", "Let held jobs start again."),
    "flow": ("corral.cli.flow", "flow_group",
             "Flows: steps, fan-out, gang steps, artifacts and resume."),
    "k8s": ("corral.cli.k8s", "k8s_group", "Kubernetes helpers: queues."),
    "simulate": ("corral.cli.simulate", "simulate_command",
                 "Replay a workload trace (SWF) through a queue policy."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported by name, on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attribute, _ = COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), attribute)
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            # A command not imported yet stands in as a stub with the same help text.
            command = self.commands.get(name) or click.Command(name, help=COMMANDS[name][2])
            if not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="corral")  # reads the installed metadata only when asked
def cli() -> None:
    """Run training code as a batch job or a multi-node gang, here or on a cluster."""


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

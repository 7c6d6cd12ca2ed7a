"""The command line: one module per command, joined here, with one error boundary.

Core code raises typed errors (``densebench.errors``); here each becomes one line on
stderr and a non-zero exit. A config error that names its setting (``threads must be...``)
is shown with the flag that sets it (``--threads must be...``). ``DENSEBENCH_DEBUG=1``
re-raises them with the traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x carries its own copy of click
    from typer import _click as click
except ImportError:  # older typer depends on click itself
    import click  # type: ignore[no-redef]

from densebench.errors import ConfigError, DensebenchError

# the profiler's C++ side (kineto) logs to stderr at import; keep the one-line contract
os.environ.setdefault("KINETO_LOG_LEVEL", "5")
# "No CUDA runtime is found" on every CPU-only inductor use says nothing a user can act on
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())
# typer's own copy of click has no Abort of its own (typer.Abort); older click has both
_ABORT = tuple({typer.Abort, getattr(click.exceptions, "Abort", typer.Abort)})


# settings whose flag is not "--" + the setting with dashes
_FLAGS = {"batch_sizes": "--batch-size", "variants": "--variant", "modes": "--mode",
          "compile_modes": "--compile-mode", "batch_timeout_ms": "--batch-timeout",
          "latency_budget_ms": "--latency-budget"}


def error_text(e: DensebenchError) -> str:
    """The one line shown for ``e``: a named setting is shown as its flag."""
    text = str(e)
    setting = getattr(e, "setting", None) if isinstance(e, ConfigError) else None
    if setting and text.startswith(setting):
        flag = _FLAGS.get(setting, "--" + setting.replace("_", "-"))
        text = flag + text[len(setting):]
    return text


class _Boundary(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:  # typer would turn it into a silent exit 130
            click.echo("densebench: interrupted", err=True)
            raise typer.Exit(128 + getattr(e, "signum", 2)) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        debug = os.environ.get("DENSEBENCH_DEBUG") not in (None, "", "0")
        try:
            rv = super().main(args=args, prog_name=prog_name or "densebench",
                              complete_var=complete_var, standalone_mode=False, **extra)
        except DensebenchError as e:
            if debug:
                raise
            click.echo(f"densebench: error: {error_text(e)}", err=True)
            sys.exit(e.exit_code)
        except _NO_ARGS_IS_HELP as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e), err=True)
            sys.exit(2)
        except click.exceptions.ClickException as e:
            if debug:
                raise
            where = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) else ""
            click.echo(f"densebench: error: {e.format_message()}{where}", err=True)
            sys.exit(e.exit_code)
        except (*_ABORT, KeyboardInterrupt) as e:
            click.echo("densebench: interrupted", err=True)
            sys.exit(128 + getattr(e, "signum", 2))
        if isinstance(rv, int) and rv:
            sys.exit(rv)
        return rv


app = typer.Typer(
    cls=_Boundary,
    help="densebench: which way of running DenseNet (or any torchvision CNN) is fastest on "
    "this machine, by how much, and does it still give the same answers?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    from densebench.cli import (
        artifacts,
        compare,
        env,
        export,
        models,
        profile,
        report,
        run,
        runs,
        search,
        sweep,
    )
    from densebench.cli import eval as eval_

    export.register(app)
    run.register(app)
    search.register(app)
    sweep.register(app)
    profile.register(app)
    eval_.register(app)
    compare.register(app)
    report.register(app)
    runs.register(app)
    models.register(app)
    artifacts.register(app)
    env.register(app)


_register()


def _terminate(signum, frame):
    from densebench.errors import Terminated

    raise Terminated(signum)


def main() -> None:
    import signal

    # a CI timeout (SIGTERM) or a closed terminal (SIGHUP) unwinds like Ctrl-C: finished
    # cells are kept, the run is marked incomplete, workers are killed, a message says so
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    app()

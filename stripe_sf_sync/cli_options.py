"""The global options of every command (--config, --log-format, -v, --quiet), declared once, accepted before or
after the command name; the `command()` decorator that adds them; logging set up from them; the options several
commands share (--json, --dry-run, --metrics-file)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from stripe_sf_sync import render
from stripe_sf_sync.defaults import DEFAULT_CONFIG_PATH
from stripe_sf_sync.errors import ExitCode
from stripe_sf_sync.lazy import lazy_module
from stripe_sf_sync.logs import LogFormat, setup_logging

if TYPE_CHECKING:
    from stripe_sf_sync import config as configuration
else:
    configuration = lazy_module("stripe_sf_sync.config")

F = TypeVar("F", bound=Callable[..., Any])

_GIVEN = "stripe_sf.global_options"  # ctx.meta key: the global options given before the command name


def _global(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    """A global option (--config, --log-format, -v, --quiet) works before or after the command name: the
    root command and every command take it (declared once, below). Given after the name, it wins; given only before, the
    command takes that value; otherwise its own (the environment variable, or the default)."""
    given: dict[str, Any] = ctx.meta.setdefault(_GIVEN, {})
    source = ctx.get_parameter_source(param.name or "")
    if source is not None and source.name == "COMMANDLINE":
        given[param.name or ""] = value
        return value
    return given.get(param.name or "", value)


@dataclass(frozen=True)
class GlobalOptions:
    """The options every command takes, before or after its name. `config` is None for the commands that read
    no config (demo, sandbox)."""

    config: Path | None
    log_format: LogFormat | None
    debug: bool
    quiet: bool
    account: str | None = None  # --account: the pipeline (Stripe account) to act on, for a config that names several


def _option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


_CONFIG = _option("config", Annotated[Path, typer.Option(
    "--config", "-c", envvar="STRIPE_SF_CONFIG", callback=_global, help="Path to sync.yaml.", show_default=True)],
    DEFAULT_CONFIG_PATH)
_ACCOUNT = _option("account", Annotated[str | None, typer.Option(
    "--account", envvar="STRIPE_SF_ACCOUNT", callback=_global, metavar="ACCT",
    help="The Stripe account (pipeline) to act on, for a config that lists several under stripe.accounts.")],
    None)
_LOGGING = (
    _option("log_format", Annotated[LogFormat | None, typer.Option(
        "--log-format", envvar="STRIPE_SF_LOG_FORMAT", callback=_global, case_sensitive=False,
        help="Log lines on stderr: auto (pretty on a terminal), plain, or json (one object a line). "
             "Default: sync.log_format in the config, else auto.")], None),
    _option("debug", Annotated[bool, typer.Option(
        "--debug", "--verbose", "-v", callback=_global,
        help="Debug logs (each API call), and a traceback on errors.")], False),
    _option("quiet", Annotated[bool, typer.Option(
        "--quiet", "-q", callback=_global, help="Warnings and errors only; a run's summary only with --json.")],
        False),
)


def with_global_options(fn: Callable[..., Any], *, config: bool, setup: bool) -> Callable[..., Any]:
    """`fn` with the global options added to what Typer sees. Its own parameter `opts` gets them, as
    GlobalOptions, after logging is set up (`setup`). Typer has no options that subcommands inherit."""
    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "opts"]
    extra = ([_CONFIG, _ACCOUNT] if config else []) + list(_LOGGING)

    def command(**kwargs: Any) -> Any:
        opts = GlobalOptions(kwargs.pop("config", None), kwargs.pop("log_format"), kwargs.pop("debug"),
                             kwargs.pop("quiet"), kwargs.pop("account", None))
        if setup:
            _setup(opts)
        return fn(opts=opts, **kwargs)

    command.__name__, command.__qualname__, command.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    command.__module__ = fn.__module__
    command.__signature__ = inspect.Signature([*own, *extra])  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in [*own, *extra]}
    return command


def command(group: typer.Typer, name: str | None = None, *, config: bool = True) -> Callable[[F], F]:
    """Register a command of `group` that takes the global options (`config`: --config too)."""
    def register(fn: F) -> F:
        group.command(name)(with_global_options(fn, config=config, setup=True))
        return fn
    return register


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the planned writes; change nothing.")]
MetricsOpt = Annotated[Path | None, typer.Option(
    "--metrics-file", help="Write the run's figures here in Prometheus text format (node_exporter's textfile "
                           "collector), atomically.")]


def _setup(opts: GlobalOptions) -> None:
    """Logging for one command: the format from the option (or STRIPE_SF_LOG_FORMAT), else the config's
    sync.log_format, else auto."""
    log_format = opts.log_format
    if log_format is None and opts.config is not None:
        log_format = _configured_log_format(opts.config)
    if log_format not in (None, "auto", "plain", "json"):
        render.usage_error(f"error: --log-format must be auto, plain or json, not {log_format!r}.")
        raise typer.Exit(int(ExitCode.CONFIG))
    if opts.debug and opts.quiet:
        render.usage_error("error: --quiet and -v/--debug ask for opposite things; choose one.")
        raise typer.Exit(int(ExitCode.CONFIG))
    setup_logging(str(log_format or "auto"), debug=opts.debug, quiet=opts.quiet)


def _configured_log_format(config: Path) -> LogFormat | None:
    """sync.log_format from the config, if it can be read; full validation happens later."""
    try:
        data = configuration.load_yaml(config.read_text(encoding="utf-8"))
        value = data["sync"]["log_format"]
        return LogFormat(value) if value in ("auto", "plain", "json") else None
    except Exception:  # any problem is reported properly when the config is loaded
        return None

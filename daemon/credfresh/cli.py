"""The command line: parse options, run one command, turn its errors into exit codes.

Every option can also come from `CREDFRESH_<OPTION>`. Imports are lazy so `status` and
`credential-process` never load boto3 or pydantic, and `fastpath` answers before argparse loads
(and reads `run`'s options, so the daemon never loads argparse).
A command returns its verdict (0 or 1) and raises an `errors` type for anything else, mapped
here through `errors.EXIT_STATUS`; `run` also returns the daemon's start-up codes (2, 3).
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING

from credfresh import __version__

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path
    from typing import TextIO

    from credfresh.context import Context

    Adder = Callable[..., None]
    Command = Callable[[str, str], argparse.ArgumentParser]

_TRUE = {"1", "true", "yes", "on"}


def _env_default(environ: Mapping[str, str], option: str, kind: str = "str") -> object:
    name = "CREDFRESH_" + option.lstrip("-").replace("-", "_").upper()
    value = environ.get(name)
    if value is None:
        return None
    if kind == "flag":
        return value.strip().lower() in _TRUE
    if kind == "list":
        return [part for part in value.replace(",", " ").split() if part]
    return value


def _parser_class(ctx: Context) -> type[argparse.ArgumentParser]:
    import argparse

    class Parser(argparse.ArgumentParser):
        """Help and usage errors (exit 2, like argparse) go to the injected streams."""

        def _print_message(self, message: str, file: object = None) -> None:
            if message:
                (ctx.err if file is sys.stderr else ctx.out).write(message)

    return Parser


def _option_adder(environ: Mapping[str, str]) -> Adder:
    """`opt(parser, *flags, kind=...)`: an option whose default is its CREDFRESH_ variable."""

    def opt(parser: argparse.ArgumentParser, *flags: str, kind: str = "str", **kw: object) -> None:
        default = _env_default(environ, flags[-1], kind)
        if kind == "flag":
            parser.add_argument(*flags, action="store_true", default=bool(default), **kw)  # type: ignore[arg-type]
        elif kind == "list":
            parser.add_argument(*flags, action="append", default=None, **kw)  # type: ignore[arg-type]
            parser.set_defaults(**{flags[-1].lstrip("-").replace("-", "_") + "_env": default})
        else:
            parser.add_argument(*flags, default=default, **kw)  # type: ignore[arg-type]

    return opt


def build_parser(ctx: Context) -> argparse.ArgumentParser:
    """The full parser: defaults from `ctx.environ`, help and errors to `ctx`'s streams."""
    parser_class = _parser_class(ctx)
    parser = parser_class(
        prog="credfresh",
        description="Keep AWS temporary credentials fresh in the shared credentials file.",
    )
    parser.add_argument("--version", action="version", version=f"credfresh {__version__}")
    opt = _option_adder(ctx.environ)
    common = parser_class(add_help=False)
    config_help = "config file (default $CREDFRESH_CONFIG, else /etc/credfresh/config.yaml)"
    opt(common, "-c", "--config", help=config_help, metavar="PATH")
    log_help = "log rendering (default: console on a TTY, else JSON)"
    opt(common, "--log-format", choices=["json", "console"], help=log_help)
    opt(common, "--log-level", choices=["debug", "info", "warning", "error"], help="log level")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=parser_class
    )

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    _add_commands(command, opt)
    return parser


def _add_commands(command: Command, opt: Adder) -> None:
    """Every command with its options (help texts as `--help` prints them)."""
    command("validate", "Check the config and print a summary (exit 2 with every problem).")
    once = command("once", "Refresh every missing or due profile once, in one write.")
    opt(once, "--profile", kind="list", metavar="P", help="only this profile (repeatable)")
    opt(once, "--force", kind="flag", help="refresh even profiles that are still fresh")
    status = command("status", "Show each profile's credentials and health.")
    opt(status, "--profile", kind="list", metavar="P", help="only this profile (repeatable)")
    minimum = "exit 1 unless each selected profile has at least this much validity left"
    opt(status, "--min-remaining", metavar="DURATION", help=f"{minimum} (default 0s)")
    opt(status, "--json", kind="flag", help="machine-readable output")
    process_help = "Print a profile's credentials as credential_process JSON, for botocore to "
    process = command("credential-process", process_help + "refresh in-process.")
    process.add_argument("profile_name", metavar="PROFILE")
    file_help = "read this credentials file and no config (any credfresh owner's section)"
    opt(process, "--credentials-file", metavar="PATH", help=file_help)
    command("run", "Run the daemon in the foreground (for systemd or a container).")
    demo = command("demo", "Run credfresh against an embedded development STS (no AWS account).")
    opt(demo, "--duration", metavar="SECONDS", help="stop after this many seconds")
    console = command("console-url", "Print an AWS console sign-in URL for a profile.")
    console.add_argument("profile_name", metavar="PROFILE")
    opt(console, "--destination", metavar="URL", help="console page to open")
    opt(console, "--issuer", metavar="NAME", help="issuer shown by the console")
    opt(console, "--duration", metavar="DURATION", help="console session length (default 1h)")
    refresh_help = "Ask the running daemon to refresh profiles now; waits until they are on disk."
    refresh = command("refresh", refresh_help)
    refresh.add_argument("profiles", nargs="*", metavar="PROFILE", help="default: every profile")
    opt(refresh, "--wait", metavar="DURATION", help="how long to wait for them (default 30s)")
    _add_exec(command, opt)


def _add_exec(command: Command, opt: Adder) -> None:
    import argparse

    exec_help = "Run CMD with the named profiles kept fresh in memory and served to it alone."
    run = command("exec", exec_help)
    opt(run, "--profile", kind="list", metavar="P", help="a profile to serve (repeatable)")
    wait = "give up (exit 1) when the credentials are not there within this (default 5m)"
    opt(run, "--start-timeout", metavar="DURATION", help=wait)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")


def _profiles(args: argparse.Namespace) -> list[str]:
    chosen = getattr(args, "profile", None) or getattr(args, "profile_env", None) or []
    return list(chosen)


def config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    return _config_at(args.config, environ)


def _config_at(given: str | None, environ: Mapping[str, str]) -> Path:
    from pathlib import Path

    from credfresh.config.model import DEFAULT_CONFIG_PATH

    return Path(given or environ.get("CREDFRESH_CONFIG") or DEFAULT_CONFIG_PATH)


def _validate(args: argparse.Namespace, ctx: Context) -> int:
    from credfresh.config.validate import load_config

    config = load_config(config_path(args, ctx.environ), ctx.environ, ctx.home, ctx.clock.now())
    for warning in config.warnings:
        ctx.err.write(f"warning: {warning}\n")
    ctx.out.write(
        f"{config.path}: ok, {len(config.profiles)} profile(s), "
        f"credentials file {config.credentials_file}, owner {config.owner}\n"
    )
    return 0


def _once(args: argparse.Namespace, ctx: Context) -> int:
    from credfresh.commands.once import once

    return once(config_path(args, ctx.environ), _profiles(args), args.force, ctx)


def _status(args: argparse.Namespace, ctx: Context) -> int:
    from credfresh.commands.status import status

    where = config_path(args, ctx.environ)
    minimum = args.min_remaining or "0s"
    return status(where, _profiles(args), minimum, as_json=args.json, ctx=ctx)


def _credential_process(args: argparse.Namespace, ctx: Context) -> int:
    from pathlib import Path

    from credfresh.commands import fastpath
    from credfresh.commands.credential_process import credential_process

    is_config, where = fastpath.source_of(args.config, args.credentials_file, ctx.environ)
    if not is_config:
        return fastpath.credential_process_from_file(where, args.profile_name, ctx)
    return credential_process(Path(where), args.profile_name, ctx)


def _run(args: argparse.Namespace, ctx: Context) -> int:
    return _start_daemon(args.config, args.log_format, args.log_level, ctx)


def _start_daemon(
    config: str | None, log_format: str | None, log_level: str | None, ctx: Context
) -> int:
    from credfresh.process import daemon

    return daemon.main(
        _config_at(config, ctx.environ), log_format=log_format, log_level=log_level, ctx=ctx
    )


def _light_run(arguments: Sequence[str], ctx: Context) -> Callable[[], int] | None:
    """`run` read without argparse when `fastpath` reads it exactly as argparse would;
    the defaults are the same `CREDFRESH_` variables."""
    from credfresh.commands import fastpath

    found = fastpath.parse_run_args(arguments)
    if found is None:
        return None
    config, log_format, log_level = (
        found.get(option) or _env_str(ctx.environ, option)
        for option in ("config", "log-format", "log-level")
    )
    return lambda: _start_daemon(config, log_format, log_level, ctx)


def _env_str(environ: Mapping[str, str], option: str) -> str | None:
    value = _env_default(environ, option)
    return value if isinstance(value, str) else None


def _demo(args: argparse.Namespace, ctx: Context) -> int:
    from credfresh.commands import demo

    duration = float(args.duration) if args.duration else None
    return demo.main(duration=duration, ctx=ctx)


def _console_url(args: argparse.Namespace, ctx: Context) -> int:
    from credfresh.commands import console_url as console

    options = console.check_options(args.duration or "1h", args.issuer, args.destination)
    return console.main(config_path(args, ctx.environ), args.profile_name, options, ctx)


def _refresh(args: argparse.Namespace, ctx: Context) -> int:
    from credfresh.commands.refresh import DEFAULT_WAIT, refresh

    where = config_path(args, ctx.environ)
    return refresh(where, args.profiles, args.wait or DEFAULT_WAIT, ctx)


def _exec(args: argparse.Namespace, ctx: Context) -> int:
    from credfresh.commands import exec as exec_command
    from credfresh.errors import UsageError

    if not _profiles(args):
        raise UsageError("exec: name at least one --profile")
    request = exec_command.Request(
        config_path(args, ctx.environ),
        _profiles(args),
        args.argv,
        start_timeout=args.start_timeout,
        log_format=args.log_format,
        log_level=args.log_level,
    )
    return exec_command.main(request, ctx)


COMMANDS: Mapping[str, Callable[[argparse.Namespace, Context], int]] = {
    "validate": _validate,
    "once": _once,
    "status": _status,
    "credential-process": _credential_process,
    "run": _run,
    "demo": _demo,
    "console-url": _console_url,
    "refresh": _refresh,
    "exec": _exec,
}


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run one command and return its exit status: errors become codes here.

    What is not given is the process's own (an empty `environ` too)."""
    from credfresh.context import Context

    ctx = Context.system(stdout, stderr, environ or None)
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["credential-process"]:
        from credfresh.commands import fastpath

        answered = fastpath.try_credential_process(arguments, ctx)
        if answered is not None:
            return answered
    from credfresh.errors import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_STATUS, CredfreshError

    command = _light_run(arguments, ctx) if arguments[:1] == ["run"] else None
    is_run = command is not None
    if command is None:
        try:
            args = build_parser(ctx).parse_args(argv)
        except SystemExit as exc:
            return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_CONFIG
        command = functools.partial(COMMANDS[args.command], args, ctx)
        is_run = args.command == "run"
    if argv is None and is_run:
        from credfresh.process.allocator import reexec_without_tcache

        reexec_without_tcache(ctx.environ, sys.orig_argv)
    try:
        return command()
    except CredfreshError as exc:
        ctx.err.write(f"credfresh: {exc.code}: {exc}\n" if exc.show_code else f"credfresh: {exc}\n")
        return next(status for kind, status in EXIT_STATUS if isinstance(exc, kind))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

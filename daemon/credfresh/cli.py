"""The command line: a thin layer that parses options and hands them to one command.

Every option can also come from `CREDFRESH_<OPTION>` (`--min-remaining` from
`CREDFRESH_MIN_REMAINING`). Commands import their modules lazily so that the fast ones
(`status`, `credential-process`) never load boto3 or pydantic, and this module imports
nothing at the top but `os` and `sys`: `credential-process` is answered by `fastpath`
before argparse is even loaded (the full parser runs when it cannot answer).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from credfresh import __version__

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path
    from typing import TextIO

_TRUE = {"1", "true", "yes", "on"}


class Streams:
    """Where a command writes: injected so tests capture output without patching.

    A plain class, not a dataclass: importing dataclasses costs `credential-process` 8 ms.
    """

    __slots__ = ("environ", "err", "out")

    def __init__(self, out: TextIO, err: TextIO, environ: Mapping[str, str]) -> None:
        self.out = out
        self.err = err
        self.environ = environ


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


def build_parser(streams: Streams) -> argparse.ArgumentParser:
    import argparse

    class _Parser(argparse.ArgumentParser):
        """Usage errors exit with EXIT_CONFIG (2), like argparse, but through our streams."""

        def __init__(self, *args: object, streams: Streams | None = None, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self._streams = streams

        def _print_message(self, message: str, file: object = None) -> None:
            if not message or self._streams is None:
                return
            target = self._streams.err if file is sys.stderr else self._streams.out
            target.write(message)

    env = streams.environ

    def opt(parser: argparse.ArgumentParser, *flags: str, kind: str = "str", **kw: object) -> None:
        default = _env_default(env, flags[-1], kind)
        if kind == "flag":
            parser.add_argument(*flags, action="store_true", default=bool(default), **kw)  # type: ignore[arg-type]
        elif kind == "list":
            parser.add_argument(*flags, action="append", default=None, **kw)  # type: ignore[arg-type]
            parser.set_defaults(**{flags[-1].lstrip("-").replace("-", "_") + "_env": default})
        else:
            parser.add_argument(*flags, default=default, **kw)  # type: ignore[arg-type]

    parser = _Parser(
        prog="credfresh",
        description="Keep AWS temporary credentials fresh in the shared credentials file.",
        streams=streams,
    )
    parser.add_argument("--version", action="version", version=f"credfresh {__version__}")

    class _Bound(_Parser):
        """Subcommand parsers write (help, usage errors) to the same injected streams."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, streams=streams, **kwargs)

    common = _Bound(add_help=False)
    opt(
        common,
        "-c",
        "--config",
        help="config file (default $CREDFRESH_CONFIG, else /etc/credfresh/config.yaml)",
        metavar="PATH",
    )
    opt(
        common,
        "--log-format",
        choices=["json", "console"],
        help="log rendering (default: console on a TTY, else JSON)",
    )
    opt(common, "--log-level", choices=["debug", "info", "warning", "error"], help="log level")

    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Bound
    )

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    command("validate", "Check the config and print a summary (exit 2 with every problem).")

    once = command("once", "Refresh every missing or due profile once, in one write.")
    opt(once, "--profile", kind="list", metavar="P", help="only this profile (repeatable)")
    opt(once, "--force", kind="flag", help="refresh even profiles that are still fresh")

    status = command("status", "Show each profile's credentials and health.")
    opt(status, "--profile", kind="list", metavar="P", help="only this profile (repeatable)")
    opt(
        status,
        "--min-remaining",
        metavar="DURATION",
        help="exit 1 unless each selected "
        "profile has at least this much validity left (default 0s)",
    )
    opt(status, "--json", kind="flag", help="machine-readable output")

    process = command(
        "credential-process",
        "Print a profile's credentials as "
        "credential_process JSON, for botocore to refresh in-process.",
    )
    process.add_argument("profile_name", metavar="PROFILE")
    opt(
        process,
        "--credentials-file",
        metavar="PATH",
        help="read this credentials file and no config (any credfresh owner's section)",
    )

    run = command("run", "Run the daemon in the foreground (for systemd or a container).")
    opt(run, "--once-then-exit", kind="flag", help=argparse.SUPPRESS)

    demo = command("demo", "Run credfresh against an embedded development STS (no AWS account).")
    opt(demo, "--duration", metavar="SECONDS", help="stop after this many seconds")

    console = command("console-url", "Print an AWS console sign-in URL for a profile.")
    console.add_argument("profile_name", metavar="PROFILE")
    opt(console, "--destination", metavar="URL", help="console page to open")
    opt(console, "--issuer", metavar="NAME", help="issuer shown by the console")
    opt(console, "--duration", metavar="DURATION", help="console session length (default 1h)")
    return parser


def _profiles(args: argparse.Namespace) -> list[str]:
    chosen = getattr(args, "profile", None) or getattr(args, "profile_env", None) or []
    return list(chosen)


def config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    from pathlib import Path

    from credfresh.config.model import default_config_path

    return Path(args.config) if args.config else default_config_path(environ)


def _validate(args: argparse.Namespace, streams: Streams) -> int:
    from credfresh.config.validate import load_config

    config = load_config(config_path(args, streams.environ), streams.environ)
    for warning in config.warnings:
        streams.err.write(f"warning: {warning}\n")
    streams.out.write(
        f"{config.path}: ok, {len(config.profiles)} profile(s), "
        f"credentials file {config.credentials_file}, owner {config.owner}\n"
    )
    return 0


def _once(args: argparse.Namespace, streams: Streams) -> int:
    from credfresh.commands import oneshot

    return oneshot.once(config_path(args, streams.environ), _profiles(args), args.force, streams)


def _status(args: argparse.Namespace, streams: Streams) -> int:
    from credfresh.commands import oneshot

    return oneshot.status(
        config_path(args, streams.environ),
        _profiles(args),
        args.min_remaining or "0s",
        as_json=args.json,
        streams=streams,
    )


def _credential_process(args: argparse.Namespace, streams: Streams) -> int:
    from pathlib import Path

    from credfresh.commands import fastpath, oneshot

    is_config, where = fastpath.source_of(args.config, args.credentials_file, streams.environ)
    if not is_config:
        return fastpath.credential_process_from_file(
            where, args.profile_name, streams.out, streams.err
        )
    return oneshot.credential_process(Path(where), args.profile_name, streams)


def _run(args: argparse.Namespace, streams: Streams) -> int:
    from credfresh.context import Context
    from credfresh.process import daemon

    return daemon.main(
        config_path(args, streams.environ),
        log_format=args.log_format,
        log_level=args.log_level,
        ctx=Context(streams.out, streams.err, streams.environ),
    )


def _demo(args: argparse.Namespace, streams: Streams) -> int:
    from credfresh.commands import demo

    duration = float(args.duration) if args.duration else None
    return demo.main(duration=duration, streams=streams)


def _console_url(args: argparse.Namespace, streams: Streams) -> int:
    from credfresh.commands import console_url as console

    return console.main(
        config_path(args, streams.environ),
        args.profile_name,
        destination=args.destination,
        issuer=args.issuer,
        duration=args.duration or "1h",
        streams=streams,
    )


COMMANDS: Mapping[str, Callable[[argparse.Namespace, Streams], int]] = {
    "validate": _validate,
    "once": _once,
    "status": _status,
    "credential-process": _credential_process,
    "run": _run,
    "demo": _demo,
    "console-url": _console_url,
}


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run one command and return its exit status; only this layer turns errors into codes."""
    streams = Streams(
        out=stdout or sys.stdout, err=stderr or sys.stderr, environ=environ or os.environ
    )
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["credential-process"]:
        from credfresh.commands import fastpath

        answered = fastpath.try_credential_process(arguments, streams.environ, streams.out)
        if answered is not None:
            return answered
    from credfresh.errors import EXIT_CONFIG, EXIT_FAILED, ConfigError, CredfreshError

    parser = build_parser(streams)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_CONFIG
    if argv is None and args.command == "run":
        from credfresh.process.allocator import reexec_without_tcache

        reexec_without_tcache(streams.environ, sys.orig_argv)
    try:
        return COMMANDS[args.command](args, streams)
    except ConfigError as exc:
        streams.err.write(f"credfresh: {exc}\n")
        return EXIT_CONFIG
    except CredfreshError as exc:
        streams.err.write(f"credfresh: {exc.code}: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130

"""`python -m credfresh.devsts`: run the dev STS as a process that prints its URL."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TextIO

from credfresh.devsts.service import DevSTS

EXIT_OK = 0
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m credfresh.devsts",
        description=(
            "Serve a development STS on loopback until SIGTERM/SIGINT. Prints one line "
            "`url=http://127.0.0.1:PORT`; steer it through /_devsts/ on that URL."
        ),
    )
    parser.add_argument("--mode", choices=("moto", "stub"), default="moto")
    parser.add_argument(
        "--host", default="127.0.0.1", help="a loopback address (default %(default)s)"
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--lifetime", type=float, default=None, help="seconds issued credentials live"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--seed", type=int, default=None, help="seed for fault probabilities")
    parser.add_argument("--record-limit", type=int, default=50_000)
    parser.add_argument(
        "--walkthrough",
        action="store_true",
        help="create the walkthrough's IAM user and roles before serving "
        "(fetch them with POST /_devsts/walkthrough)",
    )
    parser.add_argument(
        "--auth", action="store_true", help="moto mode: enforce IAM (signatures, trust policies)"
    )
    return parser


def run(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Serve until a signal; the URL line is flushed at once so a parent can read it."""
    stream = out if out is not None else sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            sts = DevSTS(
                args.mode,
                host=args.host,
                port=args.port,
                lifetime=args.lifetime,
                latency=args.latency,
                auth=args.auth,
                seed=args.seed,
                record_limit=args.record_limit,
            )
        except (ValueError, ImportError) as error:
            print(f"devsts: {error}", file=sys.stderr)
            return EXIT_USAGE
        with sts:
            if args.walkthrough:
                sts.setup_walkthrough()
            print(f"url={sts.url}", file=stream, flush=True)
            while not stop.wait(3600):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(run())

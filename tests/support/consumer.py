"""A batch job for tests: one boto3 client (or a Session per call) calling GetCallerIdentity.

Usage: python consumer.py MODE PROFILE ENDPOINT SECONDS. Prints one JSON line: the calls,
the failures by error code, and the ARNs seen. Modes: `session` (a new Session per unit of
work, reading the credentials file), `process` (one long-lived client on a
credential_process profile), `container` (one long-lived client on the container endpoint).
"""

from __future__ import annotations

import json
import sys
import time

import boto3
import botocore.config
from botocore.exceptions import BotoCoreError, ClientError


def main() -> int:
    mode, profile, endpoint, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    config = botocore.config.Config(retries={"total_max_attempts": 1})

    def make_client() -> object:
        session = boto3.Session(profile_name=profile if mode != "container" else None)
        return session.client("sts", region_name="us-east-1", endpoint_url=endpoint, config=config)

    client = None if mode == "session" else make_client()
    calls = 0
    failures: dict[str, int] = {}
    arns: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        current = make_client() if client is None else client
        try:
            arns.add(current.get_caller_identity()["Arn"])  # type: ignore[attr-defined]
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            failures[code] = failures.get(code, 0) + 1
        except BotoCoreError as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
        calls += 1
        time.sleep(0.2)
    print(json.dumps({"calls": calls, "failures": failures, "arns": sorted(arns)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

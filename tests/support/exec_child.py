"""The command `credfresh exec` runs in tests: it reports its environment, then one long-lived
boto3 client (default chain: the container provider) calls GetCallerIdentity until it has
signed with KEYS distinct access keys or SECONDS passed.

Usage: python exec_child.py STS_URL KEYS SECONDS. Prints one JSON line; never a key: access
keys are counted by a digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time

import boto3
import botocore.config
from botocore.exceptions import BotoCoreError, ClientError


def main() -> int:
    endpoint, wanted, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    token = os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]
    report: dict[str, object] = {
        "env": sorted(k for k in os.environ if k.startswith(("AWS_", "CREDFRESH_"))),
        "uri": os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        "shared_file": os.environ.get("AWS_SHARED_CREDENTIALS_FILE"),
        "region": os.environ.get("AWS_DEFAULT_REGION"),
        "token_file": token,
        "token_mode": stat.S_IMODE(os.stat(token).st_mode),
        "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(token)).st_mode),
    }
    session = boto3.Session()
    config = botocore.config.Config(retries={"total_max_attempts": 1})
    client = session.client("sts", endpoint_url=endpoint, config=config)
    credentials = session.get_credentials()  # the object the client signs with
    assert credentials is not None, "no credentials from the default chain"
    keys: set[str] = set()
    arns: set[str] = set()
    failures: dict[str, int] = {}
    calls = 0
    deadline = time.monotonic() + seconds
    while len(keys) < wanted and time.monotonic() < deadline:
        access_key = credentials.get_frozen_credentials().access_key or ""
        keys.add(hashlib.sha256(access_key.encode()).hexdigest())
        try:
            arns.add(client.get_caller_identity()["Arn"])
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            failures[code] = failures.get(code, 0) + 1
        except BotoCoreError as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
        calls += 1
        time.sleep(0.2)
    report.update(calls=calls, failures=failures, arns=sorted(arns), keys=len(keys))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

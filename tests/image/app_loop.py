"""The app container of the pod test: a unit of work, forever, until SIGTERM.

Each unit builds a new boto3 Session (which reads AWS_SHARED_CREDENTIALS_FILE and AWS_PROFILE
afresh) and calls GetCallerIdentity at the endpoint given as argv[1]. One JSON line per unit:
the access key id used and the ARN, or the error code. Runs with the image's venv Python.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from types import FrameType

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


def main() -> int:
    endpoint = sys.argv[1]
    stopping = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    config = Config(retries={"total_max_attempts": 1})
    while not stopping:
        line: dict[str, str] = {}
        try:
            session = boto3.Session()
            client = session.client(
                "sts", region_name="us-east-1", endpoint_url=endpoint, config=config
            )
            line["arn"] = client.get_caller_identity()["Arn"]
            credentials = session.get_credentials()
            line["key"] = credentials.access_key if credentials is not None else ""
        except ClientError as exc:
            line["error"] = str(exc.response.get("Error", {}).get("Code"))
        except BotoCoreError as exc:
            line["error"] = type(exc).__name__
        print(json.dumps(line), flush=True)
        time.sleep(0.2)  # the app's own pace, not a test wait
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peer: the sequential boto3 loop people write (assume each role, rewrite with configparser)."""

from __future__ import annotations

import argparse
import configparser
import json
import time

STARTED = time.perf_counter()

import boto3  # noqa: E402 - the import is part of what this peer costs


def main() -> int:
    """Assume `--count` roles one after another; rewrite the whole file after each."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--credentials", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--account", default="123456789012")
    args = parser.parse_args()
    session = boto3.Session(profile_name="base", region_name="us-east-1")
    sts = session.client("sts", endpoint_url=args.endpoint)
    began = time.perf_counter()
    for index in range(args.first, args.first + args.count):
        name = f"p{index:04d}"
        answer = sts.assume_role(
            RoleArn=f"arn:aws:iam::{args.account}:role/bench-{index:04d}",
            RoleSessionName=f"credfresh-{name}",
            DurationSeconds=900,
        )
        creds = answer["Credentials"]
        config = configparser.ConfigParser()
        config.read(args.credentials)
        if not config.has_section(name):
            config.add_section(name)
        config[name]["aws_access_key_id"] = creds["AccessKeyId"]
        config[name]["aws_secret_access_key"] = creds["SecretAccessKey"]
        config[name]["aws_session_token"] = creds["SessionToken"]
        with open(args.credentials, "w") as stream:
            config.write(stream)
    loop = time.perf_counter() - began
    print(
        json.dumps(
            {"startup_s": began - STARTED, "loop_s": loop, "per_profile_s": loop / args.count}
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

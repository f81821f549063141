"""The stdlib floor for `credfresh credential-process`: configparser reads, json prints.

Usage: credential_process_floor.py PROFILE CREDENTIALS_FILE. What any credential_process
helper written in Python must at least pay: the interpreter, configparser on the whole file
and the same JSON document. No ownership, expiry or format checks (credfresh does all three).
"""

import configparser
import json
import sys

parser = configparser.RawConfigParser(interpolation=None)
parser.read(sys.argv[2], encoding="utf-8")
section = parser[sys.argv[1]]
document = {
    "Version": 1,
    "AccessKeyId": section["aws_access_key_id"],
    "SecretAccessKey": section["aws_secret_access_key"],
    "SessionToken": section["aws_session_token"],
    "Expiration": section["x_security_token_expires"],
}
if "aws_account_id" in section:
    document["AccountId"] = section["aws_account_id"]
print(json.dumps(document))

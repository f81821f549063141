#!/usr/bin/env bash
# Peer: the AWS CLI loop people write: assume-role, then `aws configure set` for each key.
# Usage: peer_awscli.sh ENDPOINT FIRST COUNT   (the environment names the files and the CLI)
set -euo pipefail
endpoint=$1 first=$2 count=$3
for ((i = first; i < first + count; i++)); do
  name=$(printf 'p%04d' "$i")
  read -r key secret token < <(aws sts assume-role --profile base --endpoint-url "$endpoint" \
    --role-arn "$(printf 'arn:aws:iam::123456789012:role/bench-%04d' "$i")" \
    --role-session-name "credfresh-$name" --duration-seconds 900 \
    --query 'Credentials.[AccessKeyId,SecretAccessKey,SessionToken]' --output text)
  aws configure set aws_access_key_id "$key" --profile "$name"
  aws configure set aws_secret_access_key "$secret" --profile "$name"
  aws configure set aws_session_token "$token" --profile "$name"
done

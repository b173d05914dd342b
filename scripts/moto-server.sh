#!/usr/bin/env bash
# Prints the path of moto's S3-compatible server (`moto_server`, from the
# PyPI package moto[server]), installing it into .venv first if it is
# missing. The Kafka broker-restart test runs tansu with its S3 storage
# against it, so that a restarted broker still has its topics (tansu's
# memory storage would be empty; tansu's S3 storage did not work against
# SeaweedFS). The test starts it on 127.0.0.1 and stops it by PID
# (tests/kafka/broker.py). Everything but the path goes to stderr, so
#   QUOLL_MOTO=$(bash scripts/moto-server.sh)
# works in CI.
source "$(dirname "$0")/lib/venv-tool.sh"

moto_path() { [ -x .venv/bin/moto_server ] && echo .venv/bin/moto_server; }
venv_tool moto-server "moto[server]==5.2.6" moto_path

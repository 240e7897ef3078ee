#!/usr/bin/env bash
# Bring up the services the tests need, point the tests at them, and run a command:
#
#   scripts/test-env.sh go test ./...
#   eval "$(scripts/test-env.sh)"      # no command: print the exports for your shell
#
# TEST_DATABASE_DSN is a server-level DSN; tests create their own databases from it.
# A variable already set in the environment wins, and then the matching local service is
# not touched: that is how to run the tests against a Postgres or Redis Cluster elsewhere.
set -euo pipefail

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ -z ${TEST_DATABASE_DSN:-} ]]; then
	"$scripts/postgres.sh" >&2
	TEST_DATABASE_DSN="postgres://postgres@127.0.0.1:${POSTGRES_PORT:-5432}/postgres?sslmode=disable"
fi
if [[ -z ${TEST_REDIS_ADDRS:-} ]]; then
	"$scripts/redis-cluster.sh" start >&2
	TEST_REDIS_ADDRS=$("$scripts/redis-cluster.sh" addrs)
fi
export TEST_DATABASE_DSN TEST_REDIS_ADDRS

if (($# == 0)); then
	printf 'export TEST_DATABASE_DSN=%q\nexport TEST_REDIS_ADDRS=%q\n' "$TEST_DATABASE_DSN" "$TEST_REDIS_ADDRS"
	exit 0
fi
exec "$@"

#!/usr/bin/env bash
# The environment of a local ticketd: `make run` and every make target that runs a
# ticketd task (migrate, rebuild, history) go through this one script, so the server
# and the tasks always reach the same Postgres and the same Redis Cluster.
#
#   scripts/local-env.sh go run ./cmd/ticketd -rebuild-projections
#   eval "$(scripts/local-env.sh)"      # no command: print the exports for your shell,
#                                        # then run ./bin/ticketd -history <id> there
#
# What it sets, each only if it is not set already (an empty value counts as unset):
#   1. the variables of the environment win;
#   2. then those of .env (ENV_FILE, default .env at the repository root; git-ignored;
#      copy .env.example): KEY=value lines, # comments, optional surrounding quotes;
#   3. then REDIS_ADDRS: the local Redis Cluster's seeds (scripts/redis-cluster.sh
#      start, 127.0.0.1:7001-7003), which it starts or reuses. With REDIS_ADDRS set by
#      1 or 2, the local cluster is not touched.
# DATABASE_DSN keeps ticketd's default (local Postgres, database ticketd) unless 1 or 2
# set it; without it, scripts/postgres.sh makes sure the local Postgres answers.
set -euo pipefail

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
env_file=${ENV_FILE:-$scripts/../.env}

if [[ -n ${ENV_FILE:-} && ! -f $ENV_FILE ]]; then
	echo "local-env: ENV_FILE=$ENV_FILE does not exist" >&2
	exit 1
fi
exported=()
if [[ -f $env_file ]]; then
	lineno=0
	while IFS= read -r line || [[ -n $line ]]; do
		lineno=$((lineno + 1))
		line=${line%$'\r'}
		[[ $line =~ ^[[:space:]]*(#|$) ]] && continue
		if [[ ! $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
			echo "local-env: $env_file:$lineno: not a KEY=value line: $line" >&2
			exit 1
		fi
		key=${BASH_REMATCH[2]} value=${BASH_REMATCH[3]}
		if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
			value=${BASH_REMATCH[1]}
		fi
		if [[ -z ${!key:-} ]]; then
			export "$key=$value"
			exported+=("$key")
		fi
	done <"$env_file"
fi

if [[ -z ${DATABASE_DSN:-} ]]; then
	"$scripts/postgres.sh" >&2
fi
# 4. DATA_KEY_FILE: a local master key of personal data in .data.key (git-ignored), made
#    once, when neither DATA_KEY nor DATA_KEY_FILE is set. Keep the file: the local
#    database's personal data opens with it only.
if [[ -z ${DATA_KEY:-} && -z ${DATA_KEY_FILE:-} ]]; then
	key_file=$scripts/../.data.key
	if [[ ! -f $key_file ]]; then
		(umask 077 && head -c 32 /dev/urandom | base64 >"$key_file")
		echo "local-env: made a local DATA_KEY in $key_file" >&2
	fi
	DATA_KEY_FILE=$(cd "$(dirname "$key_file")" && pwd)/.data.key
	export DATA_KEY_FILE
	exported+=(DATA_KEY_FILE)
fi
if [[ -z ${REDIS_ADDRS:-} ]]; then
	"$scripts/redis-cluster.sh" start >&2
	REDIS_ADDRS=$("$scripts/redis-cluster.sh" addrs)
	export REDIS_ADDRS
	exported+=(REDIS_ADDRS)
fi

if (($# == 0)); then
	declare -A printed=()
	for key in "${exported[@]}"; do
		[[ -n ${printed[$key]:-} ]] && continue
		printed[$key]=1
		printf 'export %s=%q\n' "$key" "${!key}"
	done
	exit 0
fi
exec "$@"

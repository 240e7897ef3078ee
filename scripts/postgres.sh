#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432 for tests and `make run`.
#
#   - already answering: return at once (this is the common case and must stay fast);
#   - a Debian cluster exists but is stopped: start it with pg_ctlcluster;
#   - no cluster at all and we are root: install PostgreSQL with apt-get, create the
#     cluster if the package did not, and let user postgres in over local TCP without a
#     password (trust), which is what TEST_DATABASE_DSN assumes.
#
# pg_hba.conf is only edited on that install path: a server someone set up on purpose
# keeps its authentication.
#
# Environment (defaults are what the tests expect; overriding is mainly for trying this
# script against a scratch cluster):
#   POSTGRES_PORT     port to check/start (default 5432)
#   POSTGRES_CLUSTER  Debian cluster name (default main)
#   POSTGRES_READY_TIMEOUT  seconds to wait for readiness (default 30)
set -euo pipefail

HOST=127.0.0.1
PORT=${POSTGRES_PORT:-5432}
CLUSTER=${POSTGRES_CLUSTER:-main}
READY_TIMEOUT=${POSTGRES_READY_TIMEOUT:-30}

log() { echo "postgres: $*" >&2; }
die() { log "error: $*"; exit 1; }

# pgbin NAME: path of a client tool. Debian's /usr/bin entries are a Perl wrapper that
# costs ~0.25 s per call; the versioned binaries start in milliseconds.
# The glob sorts lexically, which orders the two-digit major versions (10+) correctly.
pgbin() {
	local c=(/usr/lib/postgresql/*/bin/"$1")
	if [[ -x ${c[-1]} ]]; then echo "${c[-1]}"; else command -v "$1"; fi
}

ready() {
	local bin
	bin=$(pgbin pg_isready) || return 1
	"$bin" -q -h "$HOST" -p "$PORT" -t 1
}

wait_ready() {
	local deadline=$((SECONDS + READY_TIMEOUT))
	until ready; do
		if ((SECONDS >= deadline)); then
			return 1
		fi
		sleep 0.3
	done
}

# The tests connect as postgres without a password; say so early if that will not work,
# rather than leave it to a confusing failure in the middle of `go test`. Only a warning:
# the caller may be using a DSN of its own with a password.
check_login() {
	local psql
	psql=$(pgbin psql) || return 0
	if ! "$psql" -h "$HOST" -p "$PORT" -U postgres -d postgres -w -Atqc 'select 1' >/dev/null 2>&1; then
		log "warning: server is up, but user postgres cannot log in over TCP without a password;" \
			"the default TEST_DATABASE_DSN will not work (set it, or use trust auth for 127.0.0.1 in pg_hba.conf)"
	fi
}

ok() {
	check_login
	echo "postgres: $HOST:$PORT ready"
	exit 0
}

# find_cluster: "VERSION" of the cluster named $CLUSTER, preferring one configured for
# $PORT when several versions are installed. Empty if there is none.
find_cluster() {
	local ver best=""
	for dir in /etc/postgresql/*/"$CLUSTER"; do
		[[ -d $dir ]] || continue
		ver=$(basename "$(dirname "$dir")")
		if grep -Eq "^[[:space:]]*port[[:space:]]*=[[:space:]]*$PORT\\b" "$dir/postgresql.conf" 2>/dev/null; then
			echo "$ver"
			return
		fi
		best=$ver
	done
	echo "$best"
}

show_log() {
	local f=/var/log/postgresql/postgresql-$1-$CLUSTER.log
	[[ -r $f ]] && { log "last lines of $f:"; tail -n 15 "$f" >&2; }
	command -v pg_lsclusters >/dev/null && pg_lsclusters >&2
	return 0
}

start_cluster() {
	local ver=$1 out
	log "starting cluster $ver/$CLUSTER"
	# --skip-systemctl-redirect: there may be no systemd (containers, CI), and when there
	# is, starting it directly is still correct for a test machine.
	# Exit code 2 means "already running": fine, the readiness wait below decides.
	out=$(pg_ctlcluster --skip-systemctl-redirect "$ver" "$CLUSTER" start 2>&1) || {
		local rc=$?
		if ((rc != 2)); then
			echo "$out" >&2
			show_log "$ver"
			die "pg_ctlcluster $ver $CLUSTER start failed (exit $rc)"
		fi
	}
}

# trust_local_tcp VERSION: make host lines for 127.0.0.1/32 and ::1/128 use trust, so
# user postgres can log in over TCP without a password. Install path only.
trust_local_tcp() {
	local hba
	hba=$(pg_conftool -s "$1" "$CLUSTER" show hba_file 2>/dev/null) || hba=/etc/postgresql/$1/$CLUSTER/pg_hba.conf
	[[ -f $hba ]] || die "pg_hba.conf not found at $hba"
	cp -p -- "$hba" "$hba.ticketd.bak"
	sed -Ei 's#^([[:space:]]*host(ssl|nossl)?[[:space:]]+[^[:space:]]+[[:space:]]+[^[:space:]]+[[:space:]]+(127\.0\.0\.1/32|::1/128)[[:space:]]+)[^[:space:]]+#\1trust#' "$hba"
	# pg_hba is first-match; if the file had no such lines at all, put ours first.
	local addr
	for addr in 127.0.0.1/32 ::1/128; do
		if ! grep -Eq "^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+${addr//./\\.}[[:space:]]+trust" "$hba"; then
			sed -i "1i host    all    all    $addr    trust" "$hba"
		fi
	done
	log "set trust auth for local TCP in $hba (backup: $hba.ticketd.bak)"
}

install_and_create() {
	((EUID == 0)) || die "no PostgreSQL cluster '$CLUSTER' and not root: install PostgreSQL" \
		"(apt-get install postgresql) or start one on $HOST:$PORT"
	if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
		log "PostgreSQL not installed, installing it with apt-get"
		{ DEBIAN_FRONTEND=noninteractive apt-get update -q &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; } >&2 ||
			die "apt-get install postgresql failed"
	fi
	local ver
	ver=$(find_cluster)
	if [[ -z $ver ]]; then
		# The package normally creates "main" itself, but not when create_main_cluster
		# is off or for another cluster name.
		ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n | tail -n 1)
		[[ -n $ver ]] || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
		log "creating cluster $ver/$CLUSTER on port $PORT"
		pg_createcluster "$ver" "$CLUSTER" -p "$PORT" >&2 || die "pg_createcluster $ver $CLUSTER failed"
	fi
	trust_local_tcp "$ver"
	start_cluster "$ver"
	# The package may have started the server before pg_hba.conf was changed.
	pg_ctlcluster --skip-systemctl-redirect "$ver" "$CLUSTER" reload >&2 || true
	echo "$ver"
}

ready && ok

ver=$(find_cluster)
if [[ -n $ver ]]; then
	start_cluster "$ver"
else
	ver=$(install_and_create)
fi

log "waiting up to ${READY_TIMEOUT}s for $HOST:$PORT"
if ! wait_ready; then
	show_log "$ver"
	die "PostgreSQL did not answer on $HOST:$PORT within ${READY_TIMEOUT}s" \
		"(cluster $ver/$CLUSTER; is it configured for port $PORT and listening on $HOST?)"
fi
ok

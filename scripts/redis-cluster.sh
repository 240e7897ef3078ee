#!/usr/bin/env bash
# Manage a throwaway 3-master Redis Cluster (no replicas) for tests and `make run`.
#
#   scripts/redis-cluster.sh start    reuse a healthy cluster, otherwise rebuild it from scratch
#   scripts/redis-cluster.sh stop     kill the cluster's redis-server processes
#   scripts/redis-cluster.sh status   print per-node and cluster state; exit 0 only if healthy
#   scripts/redis-cluster.sh addrs    print the comma-separated seed list (for REDIS_ADDRS)
#
# Environment:
#   REDIS_CLUSTER_PORTS  space-separated ports (default "7001 7002 7003")
#   REDIS_CLUSTER_DIR    parent of the per-node data dirs (default /tmp/ticketd-redis-cluster)
#
# Only processes listening on REDIS_CLUSTER_PORTS are ever touched; the machine's
# ordinary single-node Redis (6379) is left alone.
set -euo pipefail

read -r -a PORTS <<<"${REDIS_CLUSTER_PORTS:-7001 7002 7003}"
BASE_DIR=${REDIS_CLUSTER_DIR:-/tmp/ticketd-redis-cluster}
HOST=127.0.0.1
# Deadline for the cluster to converge after create; node-timeout is 2 s, so this is generous.
READY_TIMEOUT=${REDIS_CLUSTER_READY_TIMEOUT:-20}

log() { echo "redis-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

for p in "${PORTS[@]}"; do
	[[ $p =~ ^[0-9]+$ ]] || die "REDIS_CLUSTER_PORTS must be numeric ports, got '$p'"
done
((${#PORTS[@]} >= 3)) || die "a Redis Cluster needs at least 3 masters, got ports: ${PORTS[*]}"
# Guard the rm -rf in start_fresh against an accidental REDIS_CLUSTER_DIR=/ or "".
[[ -n $BASE_DIR && $BASE_DIR != / ]] || die "refusing to use REDIS_CLUSTER_DIR='$BASE_DIR'"

addrs() {
	local out="" p
	for p in "${PORTS[@]}"; do out+="${out:+,}$HOST:$p"; done
	echo "$out"
}

# rcli PORT ARGS...: redis-cli with a hard deadline. A SIGSTOPped node still accepts the
# TCP connection (the kernel does that) but never answers, and redis-cli would wait forever.
rcli() {
	local port=$1
	shift
	timeout 2 redis-cli -h "$HOST" -p "$port" "$@" 2>/dev/null
}

# pids_on_port PORT: pids of redis-server processes serving PORT. Two sources, because a
# half-dead node may be in one and not the other: the listening socket (ss), and the
# process title redis-server sets itself ("redis-server 127.0.0.1:7001 [cluster]").
pids_on_port() {
	local port=$1 pid
	{
		ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 || true
		pgrep -f "^redis-server [^ ]*:${port}( |\$)" || true
	} | sort -un | while read -r pid; do
		# ss reports any listener; only ever act on redis-server. Zombies are skipped:
		# if PID 1 does not reap, a killed daemon lingers as one and is not "running".
		if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]] &&
			[[ $(proc_state "$pid") != Z ]]; then
			echo "$pid"
		fi
	done
}

# proc_state PID: the one-letter state from /proc (R, S, T = stopped, Z = zombie, ...).
# The comm field may contain spaces, so take what follows its closing parenthesis.
proc_state() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	stat=${stat##*) }
	echo "${stat%% *}"
}

all_pids() {
	local p
	for p in "${PORTS[@]}"; do pids_on_port "$p"; done
}

# A test that pauses a node (to simulate a failure) and is then killed leaves it SIGSTOPped.
resume_stopped() {
	local pid
	for pid in $(all_pids); do
		if [[ $(proc_state "$pid") == [Tt] ]]; then
			log "resuming stopped redis-server pid $pid"
		fi
		kill -CONT "$pid" 2>/dev/null || true
	done
}

# cluster_ok: every node answers, sees exactly our N nodes, and all slots are served.
cluster_ok() {
	local p info
	for p in "${PORTS[@]}"; do
		[[ $(rcli "$p" ping) == PONG ]] || return 1
		info=$(rcli "$p" cluster info | tr -d '\r') || return 1
		grep -qx 'cluster_state:ok' <<<"$info" || return 1
		grep -qx "cluster_known_nodes:${#PORTS[@]}" <<<"$info" || return 1
		grep -qx 'cluster_slots_assigned:16384' <<<"$info" || return 1
		grep -qx 'cluster_slots_ok:16384' <<<"$info" || return 1
	done
}

all_ping() {
	local p
	for p in "${PORTS[@]}"; do [[ $(rcli "$p" ping) == PONG ]] || return 1; done
}

# wait_for CHECK SECONDS: poll a check function until it passes or the deadline hits.
wait_for() {
	local check=$1 deadline=$((SECONDS + $2))
	until "$check"; do
		((SECONDS < deadline)) || return 1
		sleep 0.2
	done
}

kill_nodes() {
	local pids pid i
	mapfile -t pids < <(all_pids)
	((${#pids[@]})) || return 0
	# CONT first: a stopped process does not act on SIGTERM until it is resumed.
	kill -CONT "${pids[@]}" 2>/dev/null || true
	kill -TERM "${pids[@]}" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		pids=()
		for pid in $(all_pids); do pids+=("$pid"); done
		((${#pids[@]})) || return 0
		sleep 0.1
	done
	log "redis-server did not exit on SIGTERM, sending SIGKILL to ${pids[*]}"
	kill -KILL "${pids[@]}" 2>/dev/null || true
	sleep 0.2
}

ensure_redis_installed() {
	command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
	((EUID == 0)) || die "redis-server/redis-cli not found; install them (apt-get install redis-server) or run as root"
	log "redis-server not found, installing it with apt-get"
	# The package's postinst would start Debian's own redis service; block service starts
	# for the duration of the install (policy-rc.d exit 101) so installing changes nothing
	# that is listening. Only if no policy is in place already, and removed afterwards.
	local policy=/usr/sbin/policy-rc.d own_policy=0
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod +x "$policy"
		own_policy=1
	fi
	local rc=0
	{ DEBIAN_FRONTEND=noninteractive apt-get update -q &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server redis-tools; } >&2 || rc=$?
	((own_policy)) && rm -f "$policy"
	((rc == 0)) || die "apt-get install redis-server failed (exit $rc)"
}

start_fresh() {
	local p dir
	kill_nodes
	for p in "${PORTS[@]}"; do
		if ss -Hltn "sport = :$p" | grep -q .; then
			die "port $p is in use by something that is not redis-server: $(ss -Hltnp "sport = :$p")"
		fi
	done
	for p in "${PORTS[@]}"; do
		dir=$BASE_DIR/$p
		# Old nodes.conf would make the node rejoin a cluster that no longer exists.
		rm -rf -- "$dir"
		mkdir -p -- "$dir"
		redis-server --port "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
			--cluster-node-timeout 2000 --appendonly no --save "" --daemonize yes \
			--bind "$HOST" --dir "$dir" --logfile "$dir/redis.log" --protected-mode no 9>&- ||
			die "redis-server on port $p failed to start; see $dir/redis.log"
	done
	wait_for all_ping 10 || die "nodes did not answer PING within 10 s; logs in $BASE_DIR/*/redis.log"

	local seeds=() out
	for p in "${PORTS[@]}"; do seeds+=("$HOST:$p"); done
	out=$(redis-cli --cluster create "${seeds[@]}" --cluster-replicas 0 --cluster-yes </dev/null 2>&1) ||
		{ echo "$out" >&2; die "redis-cli --cluster create failed"; }

	wait_for cluster_ok "$READY_TIMEOUT" || {
		rcli "${PORTS[0]}" cluster info >&2 || true
		die "cluster did not reach cluster_state:ok within ${READY_TIMEOUT} s"
	}
}

cmd_start() {
	ensure_redis_installed
	if [[ -n $(all_pids) ]]; then
		resume_stopped
		# A node that was paused longer than the node timeout is flagged FAIL by its
		# peers and the cluster reports fail until gossip clears the flag, which takes
		# a moment after the node resumes. Wait briefly before judging it broken, but
		# only if every node answers at all; otherwise there is nothing to wait for.
		if all_ping && wait_for cluster_ok 6; then
			echo "redis cluster: $(addrs) ok (reused)"
			return 0
		fi
		log "existing cluster is unhealthy or incomplete, rebuilding it"
	fi
	start_fresh
	echo "redis cluster: $(addrs) ok"
}

cmd_stop() {
	kill_nodes
	[[ -z $(all_pids) ]] || die "redis-server still running on ports ${PORTS[*]}"
	echo "redis cluster: stopped"
}

cmd_status() {
	local p pids state
	for p in "${PORTS[@]}"; do
		pids=$(pids_on_port "$p" | tr '\n' ' ')
		if [[ -z $pids ]]; then
			state="down"
		elif [[ $(proc_state "${pids%% *}") == [Tt] ]]; then
			state="stopped (SIGSTOP) pid ${pids% }"
		elif [[ $(rcli "$p" ping) == PONG ]]; then
			state="up pid ${pids% }, $(rcli "$p" cluster info | tr -d '\r' | grep '^cluster_state:')"
		else
			state="not answering pid ${pids% }"
		fi
		echo "$HOST:$p $state"
	done
	if cluster_ok; then
		echo "redis cluster: $(addrs) ok"
	else
		echo "redis cluster: $(addrs) NOT ok"
		return 1
	fi
}

# Serialise start/stop: two test runs starting at once would otherwise both wipe and
# re-create the cluster under each other. The daemons must not inherit fd 9 (see
# start_fresh), or they would hold the lock for as long as they live.
lock() {
	mkdir -p -- "$BASE_DIR"
	exec 9>"$BASE_DIR/.lock"
	flock -w 60 9 || die "timed out waiting for $BASE_DIR/.lock"
}

case ${1:-} in
start)
	lock
	cmd_start
	;;
stop)
	lock
	cmd_stop
	;;
status) cmd_status ;;
addrs) addrs ;;
*)
	echo "usage: $0 start|stop|status|addrs" >&2
	exit 2
	;;
esac

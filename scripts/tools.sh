#!/usr/bin/env bash
# Install the command-line tools that Go does not build and some targets need:
#
#   scripts/tools.sh          all of them
#   scripts/tools.sh wrk      only wrk, the load generator of cmd/ticketbench (make bench runs this first)
#
# Idempotent: a tool already on PATH is left alone, and then this does nothing. A missing
# one is installed from its Debian package with apt-get when running as root; otherwise
# the script prints the command to run and fails.
set -euo pipefail

# tool -> Debian package
declare -A PACKAGE=([wrk]=wrk)

log() { echo "tools: $*" >&2; }

ensure() {
	local tool=$1 pkg=${PACKAGE[$1]:-}
	[[ -n $pkg ]] || { log "unknown tool '$tool' (known: ${!PACKAGE[*]})"; return 1; }
	command -v "$tool" >/dev/null 2>&1 && return 0
	if ((EUID != 0)); then
		log "$tool is not installed. Install it with: sudo apt-get install -y $pkg"
		log "(or your system's package manager; then run this again)"
		return 1
	fi
	if ! command -v apt-get >/dev/null 2>&1; then
		log "$tool is not installed and there is no apt-get: install the package '$pkg' with the system's package manager"
		return 1
	fi
	log "installing $pkg with apt-get"
	export DEBIAN_FRONTEND=noninteractive
	# The package lists may be missing or stale (fresh containers): refresh them once if needed.
	if ! apt-get install -y -q --no-install-recommends "$pkg" >&2; then
		apt-get update -q >&2
		apt-get install -y -q --no-install-recommends "$pkg" >&2
	fi
	command -v "$tool" >/dev/null 2>&1 || { log "$pkg installed but $tool is not on PATH"; return 1; }
	log "$tool: $(command -v "$tool")"
}

(($# > 0)) || set -- "${!PACKAGE[@]}"
for t in "$@"; do
	ensure "$t"
done

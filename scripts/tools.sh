#!/usr/bin/env bash
# Install the command-line tools that Go does not build and some targets need:
#
#   scripts/tools.sh          all of them
#   scripts/tools.sh wrk      only wrk, the load generator of cmd/ticketbench (make bench runs this first)
#   scripts/tools.sh redocly  only Redocly CLI, the OpenAPI linter of make lint-spec
#
# Idempotent: a tool already installed is left alone, and then this does nothing (and
# needs no network). A missing Debian tool is installed from its package with apt-get
# when running as root; otherwise the script prints the command to run and fails. npm
# tools are installed at their pinned version into .tools/npm/ of the repository
# (git-ignored), never globally, with the machine's Node.js and npm; their commands are
# then .tools/npm/node_modules/.bin/NAME.
set -euo pipefail

# tool -> Debian package
declare -A PACKAGE=([wrk]=wrk)
# tool -> pinned npm package (Redocly CLI 2.x needs Node.js 20.19+ or 22.12+)
declare -A NPM_PACKAGE=([redocly]=@redocly/cli@2.77.0)
NPM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.tools/npm

log() { echo "tools: $*" >&2; }

# ensure_npm installs an npm tool at its pinned version into $NPM_DIR.
ensure_npm() {
	local tool=$1 spec=${NPM_PACKAGE[$1]}
	local name=${spec%@*} version=${spec##*@}
	local have
	have=$(node -p "require('$NPM_DIR/node_modules/$name/package.json').version" 2>/dev/null || true)
	[[ $have == "$version" && -x $NPM_DIR/node_modules/.bin/$tool ]] && return 0
	if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
		log "$tool needs Node.js (20.19+ or 22.12+) and npm, which are not installed: install them (Debian: apt-get install -y nodejs npm, if its Node.js is recent enough), then run this again"
		return 1
	fi
	log "installing $spec into ${NPM_DIR#"$PWD/"}"
	mkdir -p "$NPM_DIR"
	npm install --prefix "$NPM_DIR" --no-audit --no-fund --loglevel=error --save-exact "$spec" >&2
	[[ -x $NPM_DIR/node_modules/.bin/$tool ]] || { log "$spec installed but $NPM_DIR/node_modules/.bin/$tool is missing"; return 1; }
	log "$tool: $NPM_DIR/node_modules/.bin/$tool"
}

ensure() {
	local tool=$1 pkg=${PACKAGE[$1]:-}
	if [[ -n ${NPM_PACKAGE[$tool]:-} ]]; then
		ensure_npm "$tool"
		return
	fi
	[[ -n $pkg ]] || { log "unknown tool '$tool' (known: ${!PACKAGE[*]} ${!NPM_PACKAGE[*]})"; return 1; }
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

(($# > 0)) || set -- "${!PACKAGE[@]}" "${!NPM_PACKAGE[@]}"
for t in "$@"; do
	ensure "$t"
done

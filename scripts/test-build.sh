#!/usr/bin/env bash
# Compile, before any test runs, what `make test` needs: every package of the module, its
# dependencies (the standard library too) and its tests, race-enabled, into the build
# cache. On a fresh machine this is the long part of `make test` (minutes); `go test`
# would print nothing meanwhile. Here each package is named as it compiles, with a count,
# and with full parallelism (the first test step runs with -p 1, which would compile one
# package at a time). The test steps then find everything in the cache (same build flags)
# and only link and run their test binaries; once cached, this takes seconds.
#
#   scripts/test-build.sh              what make test runs first
#   GO=go1.26 scripts/test-build.sh    another toolchain
#
# Nothing is linked here: `go build` of the library packages compiles without linking,
# and `go list -export` compiles the test packages (a test binary's link is not cached,
# so linking here would only be repeated by go test).
set -euo pipefail

GO=${GO:-go}
FLAGS=(-race)
cd "$(dirname "${BASH_SOURCE[0]}")/.."

began=$SECONDS
echo "test-build: downloading modules (if missing)"
"$GO" mod download

# Every non-standard, non-main package a test needs, test-only dependencies included;
# the standard library comes in as their dependency.
mapfile -t pkgs < <("$GO" list "${FLAGS[@]}" -test -deps \
	-f '{{if and (not .Standard) (not .ForTest) (ne .Name "main")}}{{.ImportPath}}{{end}}' ./... | sed '/^$/d')
echo "test-build: compiling ${#pkgs[@]} packages and their standard library race-enabled;" \
	"each package is named as it compiles (none when cached)"
# go build -v names each package it compiles (cached ones are not named) on stderr.
"$GO" build "${FLAGS[@]}" -v "${pkgs[@]}" 2>&1 |
	awk '/^[^ #:]+$/ { printf "  [%d] %s\n", ++n, $0; fflush(); next } { print; fflush() }'
echo "test-build: compiling the test packages"
"$GO" list "${FLAGS[@]}" -test -deps -export -f '{{if .ForTest}}{{.ImportPath}}{{end}}' ./... | sed '/^$/d' |
	awk '{ printf "  %s\n", $0; fflush() }'
echo "test-build: done in $((SECONDS - began)) s; the tests now link and run"

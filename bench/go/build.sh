#!/bin/sh
# Build the Go side of the benchmarks offline, in GOPATH mode, against
# Debian's golang-etcd-server-dev (etcd 3.4's clientv3) and its
# dependencies: no module download. Output: build/bench/<name> (one program
# per directory of bench/go/).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "$here/../.." && pwd)/build/bench
mkdir -p "$bin" "${TMPDIR:-/tmp}/lua-etcd-gocache"
for d in "$here"/*/; do
  name=$(basename "$d")
  [ -f "$d/main.go" ] || continue
  if [ ! -x "$bin/$name" ] || [ "$d/main.go" -nt "$bin/$name" ]; then
    (cd "$d" && GO111MODULE=off GOPATH=/usr/share/gocode \
      GOCACHE="${TMPDIR:-/tmp}/lua-etcd-gocache" go build -o "$bin/$name" .)
  fi
done

#!/bin/sh
# bench/run.sh: the benchmark of bench/run.lua (what `make bench-kv` runs),
# from the repository root, with the module built (`make all build/bench/floor`)
# and bench/node installed (`make bench-deps`).
set -eu
cd "$(dirname "$0")/.."
LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='build/?.so;build/spec/?.so;;' \
  exec "${BENCH_LUA:-lua5.4}" bench/run.lua "$@"

#!/bin/bash
# Fetch etcd's own protobuf definitions for `make check-proto`.
#
#   tools/fetch-etcd-proto.sh DESTDIR
#
# Downloads (does not install) the Debian package golang-etcd-server-dev, and
# copies three files out of it, flat, into DESTDIR:
#   rpc.proto   etcdserver/etcdserverpb/rpc.proto
#   kv.proto    mvcc/mvccpb/kv.proto
#   auth.proto  auth/authpb/auth.proto
# DESTDIR/.done (holding the package name and version) marks a finished fetch;
# when it exists nothing is done.
set -eu

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 DESTDIR" >&2
    exit 2
fi

PKG=golang-etcd-server-dev
SRC=usr/share/gocode/src/go.etcd.io/etcd

mkdir -p "$1"
DEST=$(cd "$1" && pwd)

if [ -e "$DEST/.done" ]; then
    exit 0
fi

cd "$DEST"
# apt-get download drops privileges to _apt where it can: let it write here.
chmod 755 "$DEST"
rm -rf x "$PKG"_*.deb

if ! apt-get download "$PKG"; then
    echo "$0: apt-get download $PKG failed; running apt-get update and retrying" >&2
    apt-get update
    apt-get download "$PKG"
fi

shopt -s nullglob
debs=("$PKG"_*.deb)
shopt -u nullglob
if [ ${#debs[@]} -ne 1 ]; then
    echo "$0: expected exactly one $PKG .deb in $DEST, found ${#debs[@]}" >&2
    exit 1
fi
deb=${debs[0]}

dpkg-deb -x "$deb" x
cp x/$SRC/etcdserver/etcdserverpb/rpc.proto rpc.proto
cp x/$SRC/mvcc/mvccpb/kv.proto kv.proto
cp x/$SRC/auth/authpb/auth.proto auth.proto
version=$(dpkg-deb -f "$deb" Version)

rm -rf x "$deb"
printf '%s %s\n' "$PKG" "$version" > .done
echo "fetched etcd's rpc.proto, kv.proto, auth.proto from $PKG $version into $DEST"

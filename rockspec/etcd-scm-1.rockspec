-- LuaRocks description of lua-etcd.
--
-- The build is type "make" because protoc-c must turn proto/*.proto into C
-- before anything compiles, and the flags of gRPC and protobuf-c come from
-- pkg-config; the Makefile does both.
--
-- `luarocks --lua-version=5.4 make rockspec/etcd-scm-1.rockspec` builds with
-- the Makefile (in build/rock/, apart from the build the specs use) and
-- installs with its `install` target into the rock tree: etcd/core.so and
-- every file of lua/etcd/ (a glob, so no module can be forgotten; the spec
-- spec/26-package_spec.lua installs the rock into a fresh tree and uses it).
rockspec_format = "3.0"
package = "etcd"
version = "scm-1"

source = {
  -- Placeholder: the repository has no public address yet.
  url = "git+https://example.invalid/lua-etcd.git",
}

description = {
  summary = "etcd v3 client for Lua, like Go's clientv3, over gRPC's C core",
  detailed = [[
lua-etcd gives Lua the etcd v3 API: get, put, delete and compact with every
option, transactions, batches, and (in later versions) watches, leases with
background keep-alive, authentication, TLS, cluster and maintenance calls and
the concurrency recipes (mutex, election, STM). It is a C module built on
gRPC's C core and protobuf-c with a thin Lua layer; a background thread per
client drives gRPC and never touches Lua. Results are plain tables shaped like
etcd's messages; misuse raises, run-time failures return nil, msg, code.
]],
  homepage = "https://example.invalid/lua-etcd",
  license = "MIT",
  labels = { "etcd", "grpc", "database", "distributed" },
}

dependencies = {
  "lua >= 5.1", -- 5.1 (and LuaJIT, which runs the 5.1 build), 5.3, 5.4
}

-- Also needed at build time, not expressible here: protoc-c
-- (Debian: protobuf-c-compiler) and pkg-config.
external_dependencies = {
  GRPC = { header = "grpc/grpc.h", library = "grpc" },
  PROTOBUF_C = { header = "protobuf-c/protobuf-c.h", library = "protobuf-c" },
}

build = {
  type = "make",
  build_target = "all",
  build_variables = {
    LUA = "$(LUA)",
    BUILD = "build/rock",
    OPTFLAGS = "$(CFLAGS)",
    EXTRA_CFLAGS = "-I$(LUA_INCDIR)",
  },
  install_pass = true,
  install_target = "install",
  install_variables = {
    LUA = "$(LUA)",
    BUILD = "build/rock",
    LUADIR = "$(LUADIR)",
    LIBDIR = "$(LIBDIR)",
  },
}

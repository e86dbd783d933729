-- LuaRocks description of lua-etcd.
--
-- The build is type "make" because protoc-c must turn proto/*.proto into C
-- before anything compiles, and the flags of gRPC and protobuf-c come from
-- pkg-config; the Makefile does both.
--
-- Not finished: a later issue makes `luarocks make` work end to end. Today
-- the Makefile has no `install` target (hence install_pass = false below; the
-- `install` table copies the files instead) and it reads the Lua headers'
-- location from `pkg-config lua5.4` rather than LUA_INCDIR.
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
  -- license: not chosen yet (the repository has no LICENSE file).
  labels = { "etcd", "grpc", "database", "distributed" },
}

dependencies = {
  "lua >= 5.4", -- 5.1, 5.3 and LuaJIT come with the portability work
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
    LUA_INCDIR = "$(LUA_INCDIR)",
    LUA_LIBDIR = "$(LUA_LIBDIR)",
    LIBFLAG = "$(LIBFLAG)",
    OPTFLAGS = "$(CFLAGS)",
    EXTRA_CFLAGS = "-I$(LUA_INCDIR)",
  },
  install_pass = false, -- no `make install` yet (see the top of this file)
  install_target = "install",
  install_variables = {
    LUA = "$(LUA)",
    PREFIX = "$(PREFIX)",
    LUADIR = "$(LUADIR)",
    LIBDIR = "$(LIBDIR)",
    BINDIR = "$(BINDIR)",
  },
  -- Every file of lua/etcd/ must be listed here.
  install = {
    lua = {
      ["etcd"] = "lua/etcd/init.lua",
      ["etcd.auth"] = "lua/etcd/auth.lua",
      ["etcd.check"] = "lua/etcd/check.lua",
      ["etcd.cluster"] = "lua/etcd/cluster.lua",
      ["etcd.concurrency"] = "lua/etcd/concurrency.lua",
      ["etcd.cqueues"] = "lua/etcd/cqueues.lua",
      ["etcd.errors"] = "lua/etcd/errors.lua",
      ["etcd.kv"] = "lua/etcd/kv.lua",
      ["etcd.lease"] = "lua/etcd/lease.lua",
      ["etcd.mirror"] = "lua/etcd/mirror.lua",
      ["etcd.luv"] = "lua/etcd/luv.lua",
      ["etcd.recipes"] = "lua/etcd/recipes.lua",
      ["etcd.rpc"] = "lua/etcd/rpc.lua",
      ["etcd.sched"] = "lua/etcd/sched.lua",
      ["etcd.txn"] = "lua/etcd/txn.lua",
      ["etcd.wait"] = "lua/etcd/wait.lua",
      ["etcd.watch"] = "lua/etcd/watch.lua",
    },
    lib = {
      ["etcd.core"] = "build/etcd/core.so",
    },
  },
}

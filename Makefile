# lua-etcd: build, test and demo. On a fresh Debian 12 machine (as root):
#   make test    install what is missing, build, run the whole suite against real etcd
#   make demo    install what is missing, build, run examples/tour.lua and
#                examples/mirror_config.lua, each against a throw-away etcd

# Which Lua: lua5.4 (the default), lua5.3, lua5.1 or luajit (Debian's luajit2,
# OpenResty's branch). Every other Lua builds into build/<lua>/ and never
# overwrites the default build; `make test LUA=luajit` installs its packages.
# LUA may be a path (LuaRocks passes /usr/bin/lua5.1): its name decides.
LUA        ?= lua5.4
LUA_KNOWN   = lua5.4 lua5.3 lua5.1 luajit
LUA_NAME    = $(notdir $(LUA))
ifeq ($(filter $(LUA_NAME),$(LUA_KNOWN)),)
$(error LUA=$(LUA): one of $(LUA_KNOWN) expected)
endif
LUA_PC     ?= $(LUA_NAME)
# Debian's packages for each: the interpreter and the headers.
LUA_PKGS_lua5.4 = lua5.4 liblua5.4-dev
LUA_PKGS_lua5.3 = lua5.3 liblua5.3-dev
LUA_PKGS_lua5.1 = lua5.1 liblua5.1-0-dev
LUA_PKGS_luajit = luajit2 libluajit2-5.1-dev
LUA_ABI_lua5.4  = 5.4
LUA_ABI_lua5.3  = 5.3
LUA_ABI_lua5.1  = 5.1
LUA_ABI_luajit  = 5.1
BUILD      ?= build
VARIANT    ?= $(if $(filter lua5.4,$(LUA_NAME)),,$(LUA_NAME))
# The default build is build/etcd/core.so; any other (VARIANT=asan, ...) goes to
# build/<variant>/etcd/core.so and never overwrites it.
OUTDIR      = $(if $(VARIANT),$(BUILD)/$(VARIANT),$(BUILD))
GEN         = $(BUILD)/gen
OBJDIR      = $(OUTDIR)/obj
MODULE      = $(OUTDIR)/etcd/core.so

# nginx and its lua module (LuaJIT) for spec/27-openresty_spec.lua, which
# runs the LuaJIT build under a real nginx whatever LUA is.
DEB_PKGS = $(LUA_PKGS_$(LUA_NAME)) lua-busted libgrpc-dev libprotobuf-c-dev \
           protobuf-c-compiler etcd-server etcd-client pkg-config openssl \
           lua-cqueues lua-luv luarocks $(LUA_PKGS_luajit) nginx libnginx-mod-http-lua

PKG_CFLAGS = $(shell pkg-config --cflags grpc gpr libprotobuf-c $(LUA_PC) 2>/dev/null)
# The engine (src/engine/) and the generated code never see Lua's headers:
# "only the binding includes lua.h" holds by construction.
ENGINE_PKG_CFLAGS = $(shell pkg-config --cflags grpc gpr libprotobuf-c 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs grpc gpr libprotobuf-c 2>/dev/null)

# The version etcd.version reports: "X.Y.Z" when HEAD is tagged vX.Y.Z,
# else "scm" (docs/RELEASING.md). The rock of a release passes it.
VERSION ?= $(shell git describe --tags --exact-match --match 'v[0-9]*' 2>/dev/null | sed 's/^v//')
ifeq ($(strip $(VERSION)),)
override VERSION = scm
endif

OPTFLAGS  ?= -O2 -g
CFLAGS_ALL = -std=gnu11 -fPIC $(OPTFLAGS) -Wall -Wextra -Werror -fvisibility=hidden \
             -Isrc -I$(GEN) $(PKG_CFLAGS) -DLUA_ETCD_VERSION='"$(VERSION)"' $(EXTRA_CFLAGS)
ENGINE_CFLAGS = -std=gnu11 -fPIC $(OPTFLAGS) -Wall -Wextra -Werror -fvisibility=hidden \
             -Isrc -I$(GEN) $(ENGINE_PKG_CFLAGS) $(EXTRA_CFLAGS)
# Generated code is protoc-c's, not ours: build it without -Werror.
GEN_CFLAGS = -std=gnu11 -fPIC $(OPTFLAGS) -fvisibility=hidden -I$(GEN) $(ENGINE_PKG_CFLAGS) $(EXTRA_CFLAGS)
# -z nodelete: the module is never unloaded. gRPC's threads outlive any Lua
# state and call back into it (the log sink), so lua_close()'s dlclose() must
# not unmap it under them.
LDFLAGS_ALL = -shared -Wl,-z,nodelete $(EXTRA_LDFLAGS)

PROTOS    = proto/mvccpb/kv.proto proto/authpb/auth.proto proto/etcdserverpb/rpc.proto
GEN_C     = $(patsubst proto/%.proto,$(GEN)/%.pb-c.c,$(PROTOS))
GEN_H     = $(GEN_C:.c=.h)
SRC       = $(wildcard src/lua/*.c src/engine/*.c)
OBJ       = $(patsubst src/%.c,$(OBJDIR)/%.o,$(SRC)) \
            $(patsubst $(GEN)/%.c,$(OBJDIR)/gen/%.o,$(GEN_C))
HDRS      = $(wildcard src/lua/*.h src/engine/*.h)

BUSTED    = busted --lua=$(LUA)
LUA_ENV   = LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='$(OUTDIR)/?.so;$(OUTDIR)/spec/?.so;;'
ETCD_PROTO_DIR = $(BUILD)/etcd-upstream

.PHONY: all deps test demo clean check-proto spec install
# Keep the generated sources between builds.
.SECONDARY:

all: $(MODULE)

# Install whatever Debian packages are missing; nothing when all are there.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root to install:$$missing" >&2; exit 1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# Building for a Lua whose headers are missing fails here, naming the
# package, instead of building against another Lua's headers.
.PHONY: lua-headers
lua-headers:
	@pkg-config --exists $(LUA_PC) || { echo "LUA=$(LUA): no Lua headers (pkg-config $(LUA_PC)); install $(LUA_PKGS_$(LUA_NAME)) (make deps LUA=$(LUA_NAME) does, as root)" >&2; exit 1; }

$(GEN)/%.pb-c.c $(GEN)/%.pb-c.h: proto/%.proto
	@mkdir -p $(GEN)
	protoc-c --c_out=$(GEN) -Iproto $<

# protoc-c writes .c and .h together; make every object wait for all headers.
$(OBJDIR)/engine/%.o: src/engine/%.c $(HDRS) $(GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(ENGINE_CFLAGS) -c $< -o $@

$(OBJDIR)/%.o: src/%.c $(HDRS) $(GEN_H) | lua-headers
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

# core.o is rebuilt when the version changes.
VERSION_STAMP = $(OBJDIR)/version
.PHONY: FORCE
$(VERSION_STAMP): FORCE
	@mkdir -p $(dir $@)
	@echo '$(VERSION)' | cmp -s - $@ 2>/dev/null || echo '$(VERSION)' > $@
$(OBJDIR)/lua/core.o: $(VERSION_STAMP)

$(OBJDIR)/gen/%.o: $(GEN)/%.c $(GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(GEN_CFLAGS) -c $< -o $@

$(MODULE): $(OBJ)
	@mkdir -p $(dir $@)
	@echo "LD $@"
	@$(CC) $(LDFLAGS_ALL) -o $@ $(OBJ) $(PKG_LIBS) -lpthread -lm
	@bad=$$(nm -D --defined-only $@ | awk '$$2 ~ /^[TDBR]$$/ {print $$3}' | grep -v '^luaopen_etcd_core$$' || true); \
	if [ -n "$$bad" ]; then echo "exported symbols besides luaopen_etcd_core: $$bad" >&2; rm -f $@; exit 1; fi

# Our .proto files against etcd's own (from Debian's golang-etcd-server-dev,
# downloaded, never installed).
check-proto: deps
	bash tools/fetch-etcd-proto.sh $(ETCD_PROTO_DIR)
	$(LUA) tools/check-proto.lua $(ETCD_PROTO_DIR) proto

TESTSUPPORT = $(OUTDIR)/spec/testsupport.so
$(TESTSUPPORT): spec/support/testsupport.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -shared -o $@ $<

# The LuaJIT build that spec/27's nginx loads (the same as `all` when
# LUA=luajit).
LUAJIT_MODULE = $(BUILD)/luajit/etcd/core.so
.PHONY: luajit-build
luajit-build:
	@$(MAKE) --no-print-directory LUA=luajit all

# The whole suite; every spec starts its own etcd (spec/helpers.lua).
spec: all $(TESTSUPPORT) luajit-build
	$(LUA_ENV) $(BUSTED) $(BUSTED_ARGS)

# The suite under LuaJIT (as .ci/run's luajit step runs it): spec/27 runs the
# LuaJIT build under nginx in every suite, so it is left to the default one.
.PHONY: test-luajit
test-luajit:
	$(MAKE) LUA=luajit deps
	LUA_ETCD_SPEC_STOP_SECONDS=20 $(MAKE) LUA=luajit all spec BUSTED_ARGS='--exclude-tags=nginx,scale $(BUSTED_ARGS)'

# The suite under every Lua, one after the other (make test-all LUA_ALL=...
# for some): each installs its Lua, builds into build/<lua>/ and runs it.
LUA_ALL ?= $(LUA_KNOWN)
.PHONY: test-all
test-all: deps
	$(MAKE) check-proto
	@set -e; for l in $(LUA_ALL); do \
	  echo "=== the suite under $$l"; \
	  $(MAKE) --no-print-directory LUA=$$l deps; \
	  $(MAKE) --no-print-directory LUA=$$l all spec; \
	done

test: deps
	$(MAKE) all
	$(MAKE) check-proto
	$(MAKE) spec

demo: deps
	$(MAKE) all
	$(LUA_ENV) $(LUA) examples/run.lua examples/tour.lua
	$(LUA_ENV) $(LUA) examples/run.lua examples/mirror_config.lua

clean:
	rm -rf $(BUILD)

# The reference of the public API (LDoc, config.ld) in build/doc/.
.PHONY: doc
doc:
	@$(MAKE) --no-print-directory deps DEB_PKGS=lua-ldoc
	ldoc -c config.ld .

# Install the module where Lua finds it: `make install` (as root) puts
# etcd/core.so under LIBDIR and lua/etcd/*.lua under LUADIR/etcd/, every Lua
# file of lua/etcd/ by construction. PREFIX (/usr/local), DESTDIR (for
# packagers), LUA_VERSION (5.4), LIBDIR and LUADIR can be set; LuaRocks sets
# LIBDIR and LUADIR to its tree (rockspec/).
PREFIX      ?= /usr/local
LUA_VERSION ?= $(LUA_ABI_$(LUA_NAME))
LIBDIR      ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
LUADIR      ?= $(PREFIX)/share/lua/$(LUA_VERSION)
install: all
	install -d $(DESTDIR)$(LIBDIR)/etcd $(DESTDIR)$(LUADIR)/etcd
	install -m 0755 $(MODULE) $(DESTDIR)$(LIBDIR)/etcd/core.so
	install -m 0644 lua/etcd/*.lua $(DESTDIR)$(LUADIR)/etcd/

# The rockspec of release VERSION (X.Y.Z), made from the scm one: version
# X.Y.Z-1, the source at tag vX.Y.Z, VERSION passed to the build
# (docs/RELEASING.md). ROCKSPEC_DIR: where to write it (rockspec/).
ROCKSPEC_DIR ?= rockspec
.PHONY: rockspec-release
rockspec-release:
	@echo '$(VERSION)' | grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+$$' || { echo "VERSION=X.Y.Z expected, got '$(VERSION)'" >&2; exit 1; }
	sed -e 's/^version = "scm-1"$$/version = "$(VERSION)-1"/' \
	    -e 's|^  url = "\(.*\)",$$|  url = "\1",\n  tag = "v$(VERSION)",|' \
	    -e 's/^    BUILD = "build\/rock",$$/    BUILD = "build\/rock",\n    VERSION = "$(VERSION)",/' \
	    rockspec/etcd-scm-1.rockspec > $(ROCKSPEC_DIR)/etcd-$(VERSION)-1.rockspec
	@grep -q 'tag = "v$(VERSION)"' $(ROCKSPEC_DIR)/etcd-$(VERSION)-1.rockspec
	@echo "wrote $(ROCKSPEC_DIR)/etcd-$(VERSION)-1.rockspec"

# ---------------------------------------------------------------------------
# Lint: luacheck (.luacheckrc) on the Lua code, cppcheck and clang-tidy
# (.clang-tidy) on src/. Any finding fails the target.

LINT_PKGS  = lua-check cppcheck clang-tidy
LUA_LINTED = lua spec examples tools fuzz bench
TIDY_FLAGS = -std=gnu11 -Isrc -I$(GEN) $(PKG_CFLAGS)

.PHONY: lint lint-deps
lint-deps:
	@$(MAKE) --no-print-directory deps DEB_PKGS='$(LINT_PKGS)'

lint: deps lint-deps $(GEN_H)
	luacheck --no-color -q $(LUA_LINTED)
	cppcheck -q --std=c11 --enable=warning,style,performance,portability --inline-suppr \
	  --error-exitcode=1 --suppress=missingIncludeSystem -Isrc -Isrc/engine -I$(GEN) src
	printf '%s\n' $(SRC) | xargs -P 2 -I{} clang-tidy --quiet {} -- $(TIDY_FLAGS)

# ---------------------------------------------------------------------------
# Sanitizers (docs/SANITIZERS.md). Both run the whole suite; both must pass
# with no report.
#
#   make asan      build VARIANT=asan (ASan+UBSan) and run busted with it
#   make valgrind  run busted under memcheck against the default build
#
# BUSTED_ARGS is passed to both (e.g. BUSTED_ARGS='--filter=KV'); ASAN_SPECS /
# VALGRIND_SPECS pick the spec files or directories (default: spec).

SAN_CFLAGS   = -fsanitize=address,undefined -fno-omit-frame-pointer -O1 -g
SAN_LDFLAGS  = -fsanitize=address,undefined
ASAN_DIR     = $(BUILD)/asan
ASAN_RT      = $(shell $(CC) -print-file-name=libasan.so)
ASAN_SPECS  ?= spec
# lua5.4 is not instrumented: preload the ASan runtime. Every child (sh,
# mktemp, etcd, etcdctl, ...) inherits LD_PRELOAD and ASAN_OPTIONS, so leak
# checking is off by default and switched on, through the per-binary options
# file $(ASAN_DIR)/lua5.4.asan-options (%b = the binary's name), only in
# lua5.4 processes: uninstrumented tools such as mktemp "leak" at exit and
# would fail with LSan's exit code. gRPC and Lua are built without frame
# pointers, so allocation stacks may be cut short; for full ones (about twice
# as slow) run: make asan ASAN_LUA_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0
ASAN_LUA_OPTIONS ?= detect_leaks=1
# Always in the lua5.4 options: gcc 12's LeakSanitizer records dynamic TLS
# blocks by intercepting __tls_get_addr and can record a block of gRPC's
# libraries with a bogus range (0x61-...), then crashes scanning it at exit
# ("Tracer caught signal 11"). Without the interception those blocks are
# still found through the heap like any other (docs/SANITIZERS.md).
ASAN_LUA_FIXED = intercept_tls_get_addr=0
ASAN_ENV     = LD_PRELOAD='$(ASAN_RT)' \
  ASAN_OPTIONS='detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=23:include_if_exists=$(abspath $(ASAN_DIR))/%b.asan-options' \
  LSAN_OPTIONS='exitcode=23:suppressions=$(abspath spec/lsan.supp):print_suppressions=1' \
  UBSAN_OPTIONS='print_stacktrace=1:halt_on_error=1:exitcode=23'
# Run the Lua that runs busted directly (no --lua re-exec through a shell),
# and give --cpath on the command line: .busted's cpath (build/?.so) is put
# in front of LUA_CPATH and would load the default build instead.
BUSTED_DIRECT = $(LUA) /usr/bin/busted --ignore-lua
# busted ends with os.exit(code, true): lua_close dlclose()s every C module
# before LSan's exit-time leak check, whose stacks would then show our frames
# as "<unknown module>". Dropping the __gc of Lua's _CLIBS table keeps the
# modules mapped until the process exits (as ld.so-loaded libraries are).
ASAN_KEEP_LIBS = -e 'getmetatable(debug.getregistry()._CLIBS).__gc = nil'

.PHONY: asan asan-build valgrind

asan-build:
	$(MAKE) VARIANT=asan EXTRA_CFLAGS='$(SAN_CFLAGS)' EXTRA_LDFLAGS='$(SAN_LDFLAGS)' \
	  all $(ASAN_DIR)/spec/testsupport.so

asan: asan-build
	@printf '%s\n' '$(ASAN_LUA_FIXED):$(ASAN_LUA_OPTIONS)' > $(ASAN_DIR)/$(LUA).asan-options
	LUA_ETCD_SPEC_STOP_SECONDS=20 $(ASAN_ENV) LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' \
	  LUA_CPATH='$(ASAN_DIR)/?.so;$(ASAN_DIR)/spec/?.so;;' \
	  $(BUSTED_DIRECT) '--cpath=$(ASAN_DIR)/?.so;$(ASAN_DIR)/spec/?.so;' $(ASAN_KEEP_LIBS) \
	  --exclude-tags=build,nginx $(BUSTED_ARGS) $(ASAN_SPECS)

VALGRIND       ?= valgrind
VALGRIND_SPECS ?= spec
VALGRIND_FLAGS ?= --leak-check=full --errors-for-leak-kinds=definite \
  --show-leak-kinds=definite --error-exitcode=99 \
  --suppressions=spec/valgrind.supp --trace-children=no --num-callers=40 \
  --keep-debuginfo=yes

# Specs tagged #novalgrind (timing-sensitive) are skipped under valgrind;
# those tagged #build (they build and install the module with make and
# luarocks, in processes of their own) and #nginx (a real nginx runs the
# LuaJIT build) under valgrind and ASan.
valgrind: all $(TESTSUPPORT)
	$(LUA_ENV) $(VALGRIND) $(VALGRIND_FLAGS) \
	  $(BUSTED_DIRECT) '--cpath=$(OUTDIR)/?.so;$(OUTDIR)/spec/?.so;' \
	  --exclude-tags=novalgrind,build,nginx $(BUSTED_ARGS) $(VALGRIND_SPECS)

# ---------------------------------------------------------------------------
# Fuzzing with libFuzzer (docs/FUZZING.md). Everything goes to build/fuzz/,
# built with clang; the other builds are not touched.
#
#   make fuzz-build   build/fuzz/fuzz_decode and build/fuzz/fuzz_options
#   make fuzz-seeds   regenerate fuzz/corpus/decode/ (fuzz/make-seeds.lua, with
#                     the default build's core.so)
#   make fuzz         install what is missing, build, then run each target for
#                     FUZZ_SECONDS on a copy of its corpus (fuzz/corpus/<t>/
#                     and fuzz/regress/<t>/ copied into build/fuzz/corpus/<t>/);
#                     fails on any crash, leak, timeout or out-of-memory.
#
# FUZZ_ARGS is passed to both runs (e.g. FUZZ_ARGS=-jobs=2). The runs start in
# build/fuzz/ (where -jobs writes its fuzz-N.log files), so paths in FUZZ_ARGS
# must be absolute. Crash inputs are written to build/fuzz/artifacts/<target>/.

FUZZ_PKGS      = clang libclang-rt-14-dev
FUZZ_CC       ?= clang
FUZZ_DIR       = $(BUILD)/fuzz
FUZZ_SECONDS  ?= 60
FUZZ_TIMEOUT  ?= 10
FUZZ_RSS_MB   ?= 2048
FUZZ_DECODE_MAX_LEN  ?= 8192
FUZZ_OPTIONS_MAX_LEN ?= 1024
FUZZ_ARGS     ?=
FUZZ_SAN       = -fsanitize=address,undefined -fno-sanitize-recover=undefined \
                 -fno-omit-frame-pointer
# The project's own code and the generated code: coverage-instrumented.
FUZZ_CFLAGS    = -std=gnu11 -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link \
                 -Isrc -I$(GEN) -I$(FUZZ_DIR) $(PKG_CFLAGS)
FUZZ_OBJDIR    = $(FUZZ_DIR)/obj
FUZZ_CORE_OBJ  = $(patsubst src/%.c,$(FUZZ_OBJDIR)/%.o,$(SRC)) \
                 $(patsubst $(GEN)/%.c,$(FUZZ_OBJDIR)/gen/%.o,$(GEN_C))
# The decode target needs no gRPC: the converter, the depth walk and the
# generated descriptors only.
FUZZ_DECODE_OBJ = $(FUZZ_OBJDIR)/lua/pbconv.o $(FUZZ_OBJDIR)/engine/pbwalk.o \
                  $(patsubst $(GEN)/%.c,$(FUZZ_OBJDIR)/gen/%.o,$(GEN_C))
FUZZ_LUA_LIBS  = $(shell pkg-config --libs $(LUA_PC) 2>/dev/null)
FUZZ_ENV       = ASAN_OPTIONS='detect_leaks=1:halt_on_error=1:abort_on_error=0:allocator_may_return_null=0' \
                 UBSAN_OPTIONS='print_stacktrace=1:halt_on_error=1'

.PHONY: fuzz fuzz-build fuzz-deps fuzz-seeds

fuzz-deps:
	@$(MAKE) --no-print-directory deps DEB_PKGS='$(FUZZ_PKGS)'

fuzz-build: $(FUZZ_DIR)/fuzz_decode $(FUZZ_DIR)/fuzz_options

# The decode seeds are packed by the module itself (spec/13 checks that the
# committed files are what this writes).
fuzz-seeds: $(MODULE)
	@mkdir -p fuzz/corpus/decode
	$(LUA_ENV) $(LUA) fuzz/make-seeds.lua fuzz/corpus/decode

# Every message descriptor of the generated files, as `&name,` lines.
$(FUZZ_DIR)/descriptors.inc: $(GEN_H)
	@mkdir -p $(dir $@)
	sed -n 's/^extern const ProtobufCMessageDescriptor \([A-Za-z0-9_]*\);$$/\&\1,/p' $(GEN_H) > $@.tmp
	@test -s $@.tmp || { echo "no descriptors found in $(GEN_H)" >&2; exit 1; }
	@mv $@.tmp $@

$(FUZZ_OBJDIR)/%.o: src/%.c $(HDRS) $(GEN_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Wall -Wextra -c $< -o $@

$(FUZZ_OBJDIR)/gen/%.o: $(GEN)/%.c $(GEN_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_OBJDIR)/fuzz/%.o: fuzz/%.c $(HDRS) $(GEN_H) $(FUZZ_DIR)/descriptors.inc
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Wall -Wextra -Werror -DFUZZ_LUA_DIR='"$(abspath lua)"' -c $< -o $@

$(FUZZ_DIR)/fuzz_decode: $(FUZZ_OBJDIR)/fuzz/fuzz_decode.o $(FUZZ_DECODE_OBJ)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ \
	  $(shell pkg-config --libs libprotobuf-c) $(FUZZ_LUA_LIBS) -lm

$(FUZZ_DIR)/fuzz_options: $(FUZZ_OBJDIR)/fuzz/fuzz_options.o $(FUZZ_CORE_OBJ)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ \
	  $(PKG_LIBS) $(FUZZ_LUA_LIBS) -lpthread -lm

# One run: $(1) target name, $(2) max_len, $(3) extra libFuzzer flags.
define fuzz_run
	rm -rf $(FUZZ_DIR)/artifacts/$(1) && mkdir -p $(FUZZ_DIR)/artifacts/$(1) $(FUZZ_DIR)/corpus/$(1)
	for d in fuzz/corpus/$(1) fuzz/regress/$(1); do \
	  if [ -d $$d ]; then cp -R $$d/. $(FUZZ_DIR)/corpus/$(1)/; fi; \
	done
	cd $(FUZZ_DIR) && $(FUZZ_ENV) ./fuzz_$(1) -max_total_time=$(FUZZ_SECONDS) -max_len=$(2) \
	  -timeout=$(FUZZ_TIMEOUT) -rss_limit_mb=$(FUZZ_RSS_MB) -print_final_stats=1 \
	  -artifact_prefix=artifacts/$(1)/ $(3) $(FUZZ_ARGS) corpus/$(1)
endef

fuzz: deps fuzz-deps
	$(MAKE) fuzz-build
	$(call fuzz_run,decode,$(FUZZ_DECODE_MAX_LEN),)
	$(call fuzz_run,options,$(FUZZ_OPTIONS_MAX_LEN),-detect_leaks=0)

# ---------------------------------------------------------------------------
# Benchmarks (bench/): scripts against a throw-away etcd, printing ratios.
#   make bench-kv          every workload of bench/run.lua (put_seq, get_seq,
#                          get_100, get_100_ns, txn_cas_seq, lease_seq,
#                          put_conc, watch) by ours, etcd's Go client, Node's
#                          etcd3 and the bare gRPC floor, rounds interleaved
#                          (BENCH_ROUNDS, BENCH_SCALE, BENCH_WORKLOADS,
#                          BENCH_MEM=1 for the memory workloads)
#   make bench-keepalive   keepalive_scale, ours against etcd's Go client in
#                          one run, rounds interleaved: BENCH_KA leases started
#                          at once (default "20000 100000"), lost, first
#                          answers, a get's p50 with / without, close, memory
#                          (BENCH_ROUNDS, BENCH_TTL); results in bench/RESULTS.md
#   make bench-coroutines  BENCH_N puts from BENCH_N coroutines vs in sequence
#   make bench-mirror      etcd.mirror against a plain paged get: load time,
#                          memory per key, CPU per change (BENCH_MIRROR_KEYS)
#   make bench-ngx         the nginx driver: gets in an nginx content handler
#                          against the same in plain LuaJIT, one by one and
#                          from BENCH_NGX_C threads (BENCH_ROUNDS, BENCH_NGX_N)
#   make bench             all five
# The Go side builds offline against Debian's etcd 3.4 sources (GOPATH mode);
# Node's etcd3 comes from the npm registry, pinned by bench/node/package-lock.json.
BENCH_PKGS = golang-go golang-etcd-server-dev curl

.PHONY: bench bench-kv bench-keepalive bench-coroutines bench-mirror bench-ngx bench-deps
bench: bench-kv bench-coroutines bench-keepalive bench-mirror bench-ngx

bench-deps:
	@$(MAKE) --no-print-directory deps DEB_PKGS='$(BENCH_PKGS)'
	@command -v node >/dev/null 2>&1 || $(MAKE) --no-print-directory deps DEB_PKGS=nodejs
	@command -v npm >/dev/null 2>&1 || $(MAKE) --no-print-directory deps DEB_PKGS=npm
	@test -d bench/node/node_modules/etcd3 || (cd bench/node && npm ci --no-audit --no-fund)

$(BUILD)/bench/floor: bench/floor.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -g -Wall -Wextra -Werror $(ENGINE_PKG_CFLAGS) -o $@ $< $(PKG_LIBS)

bench-kv: deps bench-deps
	$(MAKE) all $(BUILD)/bench/floor
	$(LUA_ENV) BENCH_LUA='$(LUA)' $(LUA) bench/run.lua

bench-keepalive: deps bench-deps
	$(MAKE) all
	$(LUA_ENV) BENCH_LUA='$(LUA)' $(LUA) bench/keepalive.lua

bench-mirror: deps
	$(MAKE) all
	$(LUA_ENV) BENCH_LUA='$(LUA)' $(LUA) bench/mirror.lua

bench-ngx: deps bench-deps
	$(MAKE) all luajit-build
	$(LUA_ENV) $(LUA) bench/ngx.lua

bench-coroutines: deps
	$(MAKE) all
	$(LUA_ENV) $(LUA) bench/coroutines_put.lua

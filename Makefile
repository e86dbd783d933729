# lua-etcd: build, test and demo. On a fresh Debian 12 machine (as root):
#   make test    install what is missing, build, run the whole suite against real etcd
#   make demo    install what is missing, build, run examples/tour.lua against a throw-away etcd

LUA        ?= lua5.4
LUA_PC     ?= lua5.4
BUILD      ?= build
VARIANT    ?=
# The default build is build/etcd/core.so; any other (VARIANT=asan, ...) goes to
# build/<variant>/etcd/core.so and never overwrites it.
OUTDIR      = $(if $(VARIANT),$(BUILD)/$(VARIANT),$(BUILD))
GEN         = $(BUILD)/gen
OBJDIR      = $(OUTDIR)/obj
MODULE      = $(OUTDIR)/etcd/core.so

DEB_PKGS = lua5.4 liblua5.4-dev lua-busted libgrpc-dev libprotobuf-c-dev \
           protobuf-c-compiler etcd-server etcd-client pkg-config openssl

PKG_CFLAGS = $(shell pkg-config --cflags grpc gpr libprotobuf-c $(LUA_PC) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs grpc gpr libprotobuf-c 2>/dev/null)

OPTFLAGS  ?= -O2 -g
CFLAGS_ALL = -std=gnu11 -fPIC $(OPTFLAGS) -Wall -Wextra -Werror -fvisibility=hidden \
             -Isrc -I$(GEN) $(PKG_CFLAGS) $(EXTRA_CFLAGS)
# Generated code is protoc-c's, not ours: build it without -Werror.
GEN_CFLAGS = -std=gnu11 -fPIC $(OPTFLAGS) -fvisibility=hidden -I$(GEN) $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDFLAGS_ALL = -shared $(EXTRA_LDFLAGS)

PROTOS    = proto/mvccpb/kv.proto proto/authpb/auth.proto proto/etcdserverpb/rpc.proto
GEN_C     = $(patsubst proto/%.proto,$(GEN)/%.pb-c.c,$(PROTOS))
GEN_H     = $(GEN_C:.c=.h)
SRC       = $(wildcard src/*.c src/engine/*.c)
OBJ       = $(patsubst src/%.c,$(OBJDIR)/%.o,$(SRC)) \
            $(patsubst $(GEN)/%.c,$(OBJDIR)/gen/%.o,$(GEN_C))
HDRS      = $(wildcard src/*.h src/engine/*.h)

BUSTED    = busted --lua=$(LUA)
LUA_ENV   = LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='$(OUTDIR)/?.so;$(OUTDIR)/spec/?.so;;'
ETCD_PROTO_DIR = $(BUILD)/etcd-upstream

.PHONY: all deps test demo clean check-proto spec
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

$(GEN)/%.pb-c.c $(GEN)/%.pb-c.h: proto/%.proto
	@mkdir -p $(GEN)
	protoc-c --c_out=$(GEN) -Iproto $<

# protoc-c writes .c and .h together; make every object wait for all headers.
$(OBJDIR)/%.o: src/%.c $(HDRS) $(GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

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

# The whole suite; every spec starts its own etcd (spec/helpers.lua).
spec: all $(TESTSUPPORT)
	$(LUA_ENV) $(BUSTED) $(BUSTED_ARGS)

test: deps
	$(MAKE) all
	$(MAKE) check-proto
	$(MAKE) spec

demo: deps
	$(MAKE) all
	$(LUA_ENV) $(LUA) examples/run.lua examples/tour.lua

clean:
	rm -rf $(BUILD)

# ---------------------------------------------------------------------------
# Lint: luacheck (.luacheckrc) on the Lua code, cppcheck and clang-tidy
# (.clang-tidy) on src/. Any finding fails the target.

LINT_PKGS  = lua-check cppcheck clang-tidy
LUA_LINTED = lua spec examples tools
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
	@printf '%s\n' '$(ASAN_LUA_OPTIONS)' > $(ASAN_DIR)/$(LUA).asan-options
	$(ASAN_ENV) LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' \
	  LUA_CPATH='$(ASAN_DIR)/?.so;$(ASAN_DIR)/spec/?.so;;' \
	  $(BUSTED_DIRECT) '--cpath=$(ASAN_DIR)/?.so;$(ASAN_DIR)/spec/?.so;' $(ASAN_KEEP_LIBS) \
	  $(BUSTED_ARGS) $(ASAN_SPECS)

VALGRIND       ?= valgrind
VALGRIND_SPECS ?= spec
VALGRIND_FLAGS ?= --leak-check=full --errors-for-leak-kinds=definite \
  --show-leak-kinds=definite --error-exitcode=99 \
  --suppressions=spec/valgrind.supp --trace-children=no --num-callers=40 \
  --keep-debuginfo=yes

# Specs tagged #novalgrind (timing-sensitive) are skipped under valgrind.
valgrind: all $(TESTSUPPORT)
	$(LUA_ENV) $(VALGRIND) $(VALGRIND_FLAGS) \
	  $(BUSTED_DIRECT) '--cpath=$(OUTDIR)/?.so;$(OUTDIR)/spec/?.so;' \
	  --exclude-tags=novalgrind $(BUSTED_ARGS) $(VALGRIND_SPECS)

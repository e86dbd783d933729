--- etcd.testing: throw-away etcd servers for your own tests (README
-- "Testing your code against etcd"; examples/busted/config_spec.lua is a
-- complete busted spec).
--
--   local testing = require "etcd.testing"
--   local srv = testing.start()        -- one etcd on free loopback ports
--   local cli = assert(etcd.new { endpoints = srv.endpoints })
--   ...
--   cli:close(); srv:stop()
--
-- or, in a busted describe block, one etcd and a client of it, started in
-- setup and stopped in teardown, also when tests fail:
--
--   local srv, cli
--   testing.fixture(function(s, c) srv, cli = s, c end)
--
-- Plain Lua (io.popen, os.execute, /proc), on Lua 5.4, 5.3, 5.1 and LuaJIT;
-- it does not need busted. It needs the `etcd` and `etcdctl` commands
-- (Debian's etcd-server and etcd-client; the environment variables
-- LUA_ETCD_SPEC_ETCD and LUA_ETCD_SPEC_ETCDCTL name others), `sh`, Linux's
-- /proc and /dev/shm, and `openssl` for TLS.
--
-- Every etcd listens on 127.0.0.1 only, on ports picked at random among the
-- free loopback ports below the kernel's ephemeral range (a start that loses
-- a port race is retried with new ports), and keeps its data in a fresh
-- directory /dev/shm/lua-etcd-spec.XXXXXX (tmpfs). Next to each one runs a
-- small `sh` guardian that watches this Lua process (its pid and start time
-- from /proc/self/stat): once Lua has exited, crashed or been killed, the
-- guardian SIGTERMs etcd (SIGKILL after 5 s) and removes its directory,
-- within about a second. So etcd never outlives the test run, even when a
-- spec fails or the process dies; `stop()` does the same at once.
-- `stop_all()` also runs when the module is collected or the Lua state is
-- closed (busted ends with os.exit(code, true)).
--
-- Options of start / start_cluster (all optional):
--   args = {"--max-request-bytes=...", ...}  extra etcd flags (appended, so they
--                                            override the defaults below)
--   env = {NAME = "value"}                   extra environment (GOMAXPROCS=2 is set;
--                                            gomaxprocs = n changes it)
--   heartbeat_interval = 50, election_timeout = 500 (ms),
--   progress_notify_interval = "1s", name (a single server's name, default
--   "member1"; for a cluster the prefix of name1..nameN), keep_data = false
--   (the default of stop), timeout = 30 (seconds to become healthy; default
--   testing.start_timeout), attempts = 4 (port-race retries)
--   tls = certs (testing.make_certs()) or true (fresh certs): the client URLs
--     become https://127.0.0.1:P and etcd gets --cert-file/--key-file (peer
--     URLs stay http); client_cert_auth = true adds --trusted-ca-file and
--     --client-cert-auth (etcd 3.4 requires client certificates whenever it
--     has a trusted CA file); certs.client / certs.client_key are then what
--     the module's own etcdctl calls present
--
-- Server object (one member):
--   srv.name, srv.endpoint ("127.0.0.1:P"), srv.endpoints ({srv.endpoint}),
--   srv.client_url, srv.peer_url, srv.client_port, srv.peer_port,
--   srv.dir (temp dir: data/, etcd.log, etcd.pid), srv.data_dir, srv.log_file,
--   srv.pid (etcd's own pid, updated by restart)
--   TLS servers also: srv.tls (the certs table), srv.client_cert_auth,
--   srv.https_endpoint ("https://127.0.0.1:P"), srv.https_endpoints;
--   srv.endpoint stays "127.0.0.1:P" and srv.client_url is the https:// URL
--   srv:stop{keep_data=bool}  SIGTERM, ~5 s grace, SIGKILL; removes srv.dir
--                             unless keep_data; idempotent
--   srv:kill()                SIGKILL, keeps the data dir (fault tests)
--   srv:pause() / srv:resume() SIGSTOP (returns once every thread of etcd has
--                             stopped) / SIGCONT
--   srv:kill_after(seconds)   SIGKILL from a background shell `seconds` from
--                             now (while this Lua process is blocked in a
--                             call); keeps the data dir. srv:signal_after(sig,
--                             seconds) likewise with any signal. Nothing is
--                             sent if etcd is gone (or was restarted) by then.
--   srv:restart{wait=bool}    stop (if running, keeping data) and start again on
--                             the same dir and ports; waits healthy unless wait=false
--   srv:wait_healthy(timeout) srv:is_running()  srv:log_tail(n)
-- Cluster object (testing.start_cluster(n)):
--   c.members[i] (server objects), c.endpoints, c.endpoint, c.token,
--   c:stop{keep_data=bool}, c:kill(), c:restart(), c:wait_healthy(timeout),
--   c:client_on(i[, opts]) -> cli, id: a client of every member, in use on member i,
--   c:new_member() -> a member to add (cli:member_add{ m.peer_url }) and then
--   start with m:start_joining() (plain clusters),
--   c:leader_index() (nil unless the running members agree on a running
--   leader), c:wait_leader(timeout) -> index, c:log_tail(n);
--   with tls: c.tls, c.client_cert_auth, c.https_endpoints
-- Other functions:
--   testing.etcdctl(target, [opts,] args...) -> ok, stdout, stderr
--     target: server, cluster, "h:p[,h:p]" or {"h:p", ...};
--     opts: {stdin = "...", dial_timeout = "2s", command_timeout = "5s",
--            tls = certs | false, client_cert = bool}
--     A TLS server or cluster is reached over https:// with --cacert (and
--     --cert/--key when it has client_cert_auth) automatically; opts.tls
--     overrides (false: plaintext), opts.client_cert forces --cert/--key on/off.
--   testing.make_certs([dir]) -> certs: a throw-away PKI made with openssl
--     (EC P-256, valid 1 day), as file paths: certs.dir, certs.ca, certs.ca_key,
--     certs.server, certs.server_key (SAN IP:127.0.0.1, DNS:localhost),
--     certs.client, certs.client_key (CN lua-etcd-client), and an unrelated
--     second CA: certs.other_ca, certs.other_ca_key, certs.other_client,
--     certs.other_client_key. Without dir, a testing.tmpdir().
--     certs.files maps the file names ("ca.pem", ...) to paths too.
--   testing.tmpdir() -> path (removed by stop_all / when Lua dies)
--   testing.pick_ports(n), testing.proc_running(pid[, comm]), testing.lua_pid
--   testing.sleep(seconds), testing.now() (wall clock, 10 ms),
--   testing.read_file(path), testing.write_file(path, data[, mode]),
--   testing.shell_quote(s), testing.execute(cmd), testing.popen(cmd)
-- Settings (read when used): testing.start_timeout (30 s), testing.stop_grace
--   (5 s), testing.start_attempts (4).
-- @module etcd.testing
local compat = require "etcd.compat"

local M = {}

local ETCD = os.getenv("LUA_ETCD_SPEC_ETCD") or "etcd"
local ETCDCTL = os.getenv("LUA_ETCD_SPEC_ETCDCTL") or "etcdctl"
local SHM = "/dev/shm"

--- Seconds a start waits for etcd to be healthy (opts.timeout overrides).
M.start_timeout = 30
--- Seconds between SIGTERM and SIGKILL in stop (opts.grace overrides).
M.stop_grace = 5
--- Starts tried when a port was taken meanwhile (opts.attempts overrides).
M.start_attempts = 4

-- ---------------------------------------------------------------------------
-- small utilities

local function q(s)
  return "'" .. (tostring(s):gsub("'", "'\\''")) .. "'"
end
--- shell_quote(s) -> s quoted for sh (in single quotes).
M.shell_quote = q

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, data, mode)
  local f = assert(io.open(path, mode or "wb"))
  f:write(data)
  f:close()
end

--- read_file(path) -> its bytes, or nil, why when it cannot be opened.
M.read_file = read_file
--- write_file(path, data[, mode]): raises when it cannot be written.
M.write_file = write_file

--- execute(cmd) -> os.execute(cmd) with Lua 5.2+'s results everywhere: true
-- or nil, then "exit" and the exit status, or "signal" and the signal number
-- (Lua 5.1's os.execute returns the raw wait status).
function M.execute(cmd)
  local a, how, code = os.execute(cmd)
  if type(a) ~= "number" then return a, how, code end
  if a % 128 ~= 0 then return nil, "signal", a % 128 end
  code = math.floor(a / 256) % 256
  return code == 0 or nil, "exit", code
end

local RC_MARK = ":lua_etcd_spec_status:" -- no pattern magic
local OLD_POPEN = _VERSION == "Lua 5.1"

--- popen(cmd) -> h: cmd started by io.popen for reading; h.finish()
-- reads all of its output, closes it and returns the output, then Lua 5.2+'s
-- status triple (true or nil, "exit" or "signal", code). Lua 5.1's
-- p:close() gives no exit status: there the command prints $? after its
-- output, and finish() takes it off again.
function M.popen(cmd)
  local old = OLD_POPEN
  if old then cmd = ("( %s\n); printf '\\n%s%%d\\n' $?"):format(cmd, RC_MARK) end
  local p = assert(io.popen(cmd, "r"))
  local h = {}
  function h.finish()
    local out = p:read("*a")
    local ok, how, code = p:close()
    if old then
      local body, rc = out:match("^(.*)\n" .. RC_MARK .. "(%d+)\n$")
      if body then
        out, code = body, tonumber(rc)
        ok, how = code == 0 or nil, "exit"
      else
        ok, how, code = nil, "exit", -1
      end
    end
    return out, ok, how, code
  end
  return h
end

-- Run a shell command, return ok, stdout.
local function run(cmd)
  local out, ok = M.popen(cmd).finish()
  return ok == true, out
end

--- sleep(seconds): wait (with the `sleep` command).
function M.sleep(seconds)
  os.execute(string.format("sleep %.3f", seconds))
end

-- Wall clock with sub-second resolution (os.clock is CPU time).
local function now()
  local s = read_file("/proc/uptime")
  local t = s and tonumber(s:match("^(%S+)"))
  return t or os.time()
end
--- now() -> seconds: a wall clock (/proc/uptime, 10 ms steps).
M.now = now

local function urandom_int(nbytes)
  local f = io.open("/dev/urandom", "rb")
  local n = 0
  if f then
    local s = f:read(nbytes)
    f:close()
    for i = 1, #s do n = n * 256 + s:byte(i) end
  else
    n = math.random(0, 2 ^ (8 * nbytes) - 1)
  end
  return n
end

-- /proc/<pid>/stat -> state letter, start time (field 22), comm
local function proc_stat(pid)
  local s = read_file("/proc/" .. tostring(pid) .. "/stat")
  if not s then return nil end
  local comm, rest = s:match("^%d+ %((.*)%) (.*)$")
  if not rest then return nil end
  local fields = {}
  for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
  -- rest starts at field 3 (state); field 22 is starttime
  return fields[1], fields[20], comm
end

-- Is pid a live (not zombie) process, optionally with the given comm?
-- comm "etcd" also accepts "env": right after the launch, `env` may not have
-- exec'd etcd yet (same pid).
local function proc_running(pid, comm)
  if not pid then return false end
  local state, _, c = proc_stat(pid)
  if not state or state == "Z" or state == "X" then return false end
  if comm and c ~= comm and not (comm == "etcd" and c == "env") then return false end
  return true
end
--- proc_running(pid[, comm]) -> whether pid is a live process (not a
-- zombie), named comm if given ("etcd" also matches `env` about to exec it).
M.proc_running = proc_running

local SELF_PID, SELF_START
do
  local s = assert(read_file("/proc/self/stat"), "cannot read /proc/self/stat")
  SELF_PID = tonumber(s:match("^(%d+)"))
  local _, st = proc_stat(SELF_PID)
  SELF_START = st
end
--- The pid of this Lua process (the one the guardians watch).
M.lua_pid = SELF_PID

local counter = 0
local function unique(prefix)
  counter = counter + 1
  return string.format("%s-%d-%d-%08x", prefix, SELF_PID, counter, urandom_int(4))
end


-- ---------------------------------------------------------------------------
-- guardian: a sh loop that outlives nothing but this Lua process

-- Removes `dir` (after killing the etcd whose pid is in dir/etcd.pid, if any)
-- once this Lua process is gone; exits by itself once `dir` is gone.
local GUARD = [[
L=$1; ST=$2; B=$3
alive() {
  s=; { read -r s < /proc/$1/stat; } 2>/dev/null
  s=${s##*) }; set -- $s
  case "$1" in ""|Z|X) return 1;; esac
  [ -z "$2" ] || [ "${20}" = "$2" ]
}
lua_alive() { s=; { read -r s < /proc/$L/stat; } 2>/dev/null; s=${s##*) }; set -- $s
  case "$1" in ""|Z|X) return 1;; esac; [ "${20}" = "$ST" ]; }
while [ -d "$B" ] && lua_alive; do sleep 1; done
[ -d "$B" ] || exit 0
P=; { read -r P < "$B/etcd.pid"; } 2>/dev/null
c=; { read -r c < /proc/$P/comm; } 2>/dev/null
if [ -n "$P" ] && { [ "$c" = etcd ] || [ "$c" = env ]; }; then
  kill -TERM $P 2>/dev/null; kill -CONT $P 2>/dev/null
  i=0; while [ $i -lt 20 ] && alive $P; do sleep 0.25; i=$((i+1)); done
  alive $P && kill -KILL $P 2>/dev/null
fi
rm -rf "$B"
]]

-- Start a guardian for dir; returns its pid.
local function start_guardian(dir)
  local cmd = string.format("sh -c %s lua-etcd-spec-guard %d %s %s >/dev/null 2>&1 </dev/null & echo $!",
    q(GUARD), SELF_PID, q(SELF_START or ""), q(dir))
  local _, out = run(cmd)
  return tonumber(out:match("%d+"))
end

local function kill_guardian(pid)
  if pid and proc_running(pid, "sh") then
    os.execute("kill -TERM " .. pid .. " 2>/dev/null")
  end
end

-- ---------------------------------------------------------------------------
-- temp dirs

local registry = {}   -- running servers / clusters, keyed by object
local tmpdirs = {}    -- tmpdir() results: path -> guardian pid

local function mktemp()
  local ok, out = run("mktemp -d " .. SHM .. "/lua-etcd-spec.XXXXXX")
  local dir = ok and out:match("^%s*(.-)%s*$")
  if not dir or dir == "" then error("mktemp -d under " .. SHM .. " failed") end
  return dir
end

local function rm_rf(dir)
  -- only ever our own temp dirs
  assert(dir:match("^" .. SHM .. "/lua%-etcd%-spec%.[%w]+$"), "refusing to remove " .. dir)
  os.execute("rm -rf " .. q(dir))
end

--- tmpdir() -> path: a new directory under /dev/shm, removed by stop_all()
-- or, at the latest, by its guardian once this Lua process is gone.
function M.tmpdir()
  local dir = mktemp()
  tmpdirs[dir] = start_guardian(dir)
  return dir
end

-- ---------------------------------------------------------------------------
-- ports

local function ephemeral_low()
  local s = read_file("/proc/sys/net/ipv4/ip_local_port_range")
  return s and tonumber(s:match("^%s*(%d+)")) or 32768
end

-- Every local port in /proc/net/tcp{,6} (any state), plus inode of listeners.
local function net_table()
  local used, listeners = {}, {}
  for _, f in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
    local s = read_file(f) or ""
    for line in s:gmatch("[^\n]+") do
      local lport, st, inode = line:match(
        "^%s*%d+:%s+%x+:(%x+)%s+%x+:%x+%s+(%x+)%s+%S+%s+%S+%s+%S+%s+%d+%s+%d+%s+(%d+)")
      if lport then
        local p = tonumber(lport, 16)
        used[p] = true
        if st == "0A" then
          listeners[#listeners + 1] = { port = p, inode = inode }
        end
      end
    end
  end
  return used, listeners
end

local handed_out = {}   -- ports this process already gave to a server

--- pick_ports(n) -> {port, ...}: n distinct free loopback ports, random in
-- [20000, min(45000, ephemeral_low - 1)], none handed out before by this
-- module. (Starts call testing.pick_ports: a test may replace it.)
function M.pick_ports(n)
  local lo, hi = 20000, math.min(45000, ephemeral_low() - 1)
  if hi - lo < 1000 then lo, hi = 20000, 45000 end
  local used = net_table()
  local picked, seen = {}, {}
  local tries = 0
  while #picked < n do
    tries = tries + 1
    if tries > 10000 then error("pick_ports: no free port found") end
    local p = lo + urandom_int(4) % (hi - lo + 1)
    if not used[p] and not seen[p] and not handed_out[p] then
      seen[p] = true
      picked[#picked + 1] = p
    end
  end
  for _, p in ipairs(picked) do handed_out[p] = true end
  return picked
end

-- Does pid own a LISTEN socket on port?
local function owns_listener(pid, port)
  local ok, out = run("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
  if not ok then return false end
  local inodes = {}
  for inode in out:gmatch("socket:%[(%d+)%]") do inodes[inode] = true end
  local _, listeners = net_table()
  for _, l in ipairs(listeners) do
    if l.port == port and inodes[l.inode] then return true end
  end
  return false
end

-- ---------------------------------------------------------------------------
-- etcdctl

local function endpoints_of(target)
  if type(target) == "string" then return target end
  if type(target) == "table" then
    if target.endpoints then return table.concat(target.endpoints, ",") end
    if target[1] then return table.concat(target, ",") end
  end
  error("etcdctl: target must be a server, a cluster, a string or a list of endpoints", 3)
end

-- "h:p,h:p" -> "https://h:p,https://h:p" (endpoints with a scheme stay)
local function with_https(eps)
  local t = {}
  for ep in eps:gmatch("[^,]+") do
    if not ep:match("^%a[%w+.-]*://") then ep = "https://" .. ep end
    t[#t + 1] = ep
  end
  return table.concat(t, ",")
end

--- etcdctl(target, [opts,] args...) -> ok, stdout, stderr: runs etcdctl
-- against a server, a cluster, "h:p[,h:p]" or {"h:p", ...} (see the top of
-- this file for opts).
function M.etcdctl(target, ...)
  local args = compat.pack(...)
  local opts, first = {}, 1
  if type(args[1]) == "table" then opts, first = args[1], 2 end
  local eps = endpoints_of(target)
  -- TLS: from opts.tls (false: none), else from a TLS server / cluster
  local tls, client_cert = opts.tls, opts.client_cert
  if tls == nil and type(target) == "table" then
    tls = target.tls
    if client_cert == nil then client_cert = target.client_cert_auth end
  end
  local parts = { "ETCDCTL_API=3", ETCDCTL }
  if tls then
    eps = with_https(eps)
    parts[#parts + 1] = "--cacert=" .. q(tls.ca)
    if client_cert then
      parts[#parts + 1] = "--cert=" .. q(tls.client)
      parts[#parts + 1] = "--key=" .. q(tls.client_key)
    end
  end
  parts[#parts + 1] = "--endpoints=" .. q(eps)
  parts[#parts + 1] = "--dial-timeout=" .. (opts.dial_timeout or "2s")
  parts[#parts + 1] = "--command-timeout=" .. (opts.command_timeout or "5s")
  for i = first, args.n do parts[#parts + 1] = q(args[i]) end
  local errf = os.tmpname()
  local inf
  if opts.stdin then
    inf = os.tmpname()
    write_file(inf, opts.stdin)
    parts[#parts + 1] = "<" .. q(inf)
  else
    parts[#parts + 1] = "</dev/null"
  end
  parts[#parts + 1] = "2>" .. q(errf)
  local ok, out = run(table.concat(parts, " "))
  local err = read_file(errf) or ""
  os.remove(errf)
  if inf then os.remove(inf) end
  return ok, out, err
end

-- ---------------------------------------------------------------------------
-- certificates

-- Run openssl (argument list, quoted here) in dir; raise with its output on failure.
local function openssl(dir, ...)
  local a = {}
  for i, x in ipairs({ ... }) do a[i] = q(x) end
  local ok, out = run("cd " .. q(dir) .. " && openssl " .. table.concat(a, " ") .. " </dev/null 2>&1")
  if not ok then error("make_certs: openssl " .. table.concat({ ... }, " ") .. " failed:\n" .. out, 3) end
end

local function serial()
  return string.format("0x%08x%08x", urandom_int(4), urandom_int(4))
end

local function new_ca(dir, name, cn)
  openssl(dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", name .. "-key.pem", "-out", name .. ".pem", "-days", "1", "-set_serial", serial(),
    "-subj", "/O=lua-etcd spec/CN=" .. cn,
    "-addext", "basicConstraints=critical,CA:TRUE",
    "-addext", "keyUsage=critical,keyCertSign,cRLSign")
end

-- A key + certificate `name`.pem / `name`-key.pem signed by CA `ca`.
local function new_leaf(dir, name, ca, cn, ext)
  write_file(dir .. "/" .. name .. ".ext", table.concat(ext, "\n") .. "\n")
  openssl(dir, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", name .. "-key.pem", "-out", name .. ".csr", "-subj", "/O=lua-etcd spec/CN=" .. cn)
  openssl(dir, "x509", "-req", "-in", name .. ".csr", "-CA", ca .. ".pem", "-CAkey", ca .. "-key.pem",
    "-set_serial", serial(), "-days", "1", "-out", name .. ".pem", "-extfile", name .. ".ext")
  os.remove(dir .. "/" .. name .. ".csr")
  os.remove(dir .. "/" .. name .. ".ext")
end

local LEAF = { "basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment" }
local function ext(...)
  local t = { compat.unpack(LEAF) }
  for _, x in ipairs({ ... }) do t[#t + 1] = x end
  return t
end

--- make_certs([dir]) -> certs: a throw-away CA, server and client
-- certificates (file paths; see the top of this file).
function M.make_certs(dir)
  if dir then
    os.execute("mkdir -p " .. q(dir))
  else
    dir = M.tmpdir()
  end
  new_ca(dir, "ca", "lua-etcd test CA")
  -- serverAuth for clients; clientAuth too because etcd 3.4's own gRPC
  -- gateway dials the server with the server certificate
  new_leaf(dir, "server", "ca", "localhost", ext("subjectAltName=IP:127.0.0.1,DNS:localhost",
    "extendedKeyUsage=serverAuth,clientAuth"))
  new_leaf(dir, "client", "ca", "lua-etcd-client", ext("extendedKeyUsage=clientAuth"))
  new_ca(dir, "other-ca", "lua-etcd other CA")
  new_leaf(dir, "other-client", "other-ca", "lua-etcd-other-client", ext("extendedKeyUsage=clientAuth"))
  local certs = { dir = dir, files = {} }
  for _, n in ipairs { "ca", "server", "client", "other-ca", "other-client" } do
    local k = n:gsub("-", "_")
    certs[k] = dir .. "/" .. n .. ".pem"
    certs[k .. "_key"] = dir .. "/" .. n .. "-key.pem"
    certs.files[n .. ".pem"] = certs[k]
    certs.files[n .. "-key.pem"] = certs[k .. "_key"]
  end
  return certs
end

-- ---------------------------------------------------------------------------
-- servers

local Server = {}
Server.__index = Server

local function tail(s, n)
  local lines = {}
  for line in (s or ""):gmatch("[^\n]*\n?") do
    if line ~= "" then lines[#lines + 1] = line end
  end
  local from = math.max(1, #lines - n + 1)
  return table.concat(lines, "", from)
end

function Server:log_tail(n)
  return tail(read_file(self.log_file), n or 40)
end

function Server:__tostring()
  return string.format("etcd %s %s (pid %s, dir %s)", self.name, self.client_url,
    tostring(self.pid), self.dir)
end

function Server:is_running()
  return proc_running(self.pid, "etcd")
end

-- Start the etcd process (does not wait).
function Server:_spawn(state)
  local a = {
    "--name", self.name,
    "--data-dir", self.data_dir,
    "--listen-client-urls", self.client_url,
    "--advertise-client-urls", self.client_url,
    "--listen-peer-urls", self.peer_url,
    "--initial-advertise-peer-urls", self.peer_url,
    "--initial-cluster", self.initial_cluster,
    "--initial-cluster-state", state,
    "--initial-cluster-token", self.token,
    "--heartbeat-interval", tostring(self.opts.heartbeat_interval or 50),
    "--election-timeout", tostring(self.opts.election_timeout or 500),
    "--experimental-watch-progress-notify-interval=" .. (self.opts.progress_notify_interval or "1s"),
    "--logger=zap", "--log-outputs=stderr",
  }
  if self.tls then
    for _, x in ipairs { "--cert-file", self.tls.server, "--key-file", self.tls.server_key } do
      a[#a + 1] = x
    end
    -- etcd 3.4 demands client certificates as soon as it has a
    -- --trusted-ca-file (TLSInfo.ServerConfig: RequireAndVerifyClientCert),
    -- so the CA goes with --client-cert-auth only
    if self.client_cert_auth then
      for _, x in ipairs { "--trusted-ca-file", self.tls.ca, "--client-cert-auth" } do a[#a + 1] = x end
    end
  end
  for _, x in ipairs(self.opts.args or {}) do a[#a + 1] = x end
  local env = { "GOMAXPROCS=" .. (self.opts.gomaxprocs or 2) }
  for k, v in pairs(self.opts.env or {}) do env[#env + 1] = k .. "=" .. v end
  local qa, qe = {}, {}
  for i, x in ipairs(a) do qa[i] = q(x) end
  for i, x in ipairs(env) do qe[i] = q(x) end
  -- one log per server dir; restarts append to it
  write_file(self.log_file, string.format("=== %s: %s %s\n", state, ETCD, table.concat(a, " ")), "ab")
  -- env execs etcd, so $! is etcd's own pid; sh writes the pid file itself so
  -- the guardian can find etcd even if Lua dies right here.
  local cmd = string.format(
    "cd / && env %s %s %s >>%s 2>&1 </dev/null & echo $! >%s; echo $!",
    table.concat(qe, " "), q(ETCD), table.concat(qa, " "),
    q(self.log_file), q(self.pid_file))
  local _, out = run(cmd)
  self.pid = tonumber(out:match("%d+"))
  if not self.pid then error("could not start etcd: " .. out) end
  if not proc_running(self.guard_pid, "sh") then
    self.guard_pid = start_guardian(self.dir)
  end
  self.stopped = false
  registry[self] = true
end

local function signal(pid, sig)
  os.execute(string.format("kill -%s %d 2>/dev/null", sig, pid))
end

-- Signal etcd and wait until it is gone; SIGKILL after `grace` seconds.
function Server:_terminate(sig, grace)
  local pid = self.pid
  if not pid or not self:is_running() then return end
  signal(pid, sig)
  signal(pid, "CONT")
  local deadline = now() + grace
  while proc_running(pid, "etcd") and now() < deadline do M.sleep(0.05) end
  if proc_running(pid, "etcd") then
    signal(pid, "KILL")
    deadline = now() + 5
    while proc_running(pid, "etcd") and now() < deadline do M.sleep(0.05) end
  end
end

function Server:stop(opts)
  opts = opts or {}
  self:_terminate("TERM", opts.grace or M.stop_grace)
  self.stopped = true
  local keep = opts.keep_data
  if keep == nil then keep = self.opts.keep_data end
  if not keep then
    kill_guardian(self.guard_pid)
    self.guard_pid = nil
    rm_rf(self.dir)
    registry[self] = nil
  end
  -- keep_data: the dir stays (and the server stays registered) until a later
  -- stop() / testing.stop_all() / the end of this Lua process.
  return self
end

function Server:kill()
  self:_terminate("KILL", 5)
  return self
end

-- The signal is sent by a background sh, only if that pid is still etcd.
function Server:signal_after(sig, seconds)
  assert(self.pid, "signal_after: server not started")
  local script = string.format(
    "sleep %.3f; c=; { read -r c < /proc/%d/comm; } 2>/dev/null; [ \"$c\" = etcd ] && kill -%s %d",
    seconds, self.pid, sig, self.pid)
  os.execute("sh -c " .. q(script) .. " >/dev/null 2>&1 </dev/null &")
  return self
end

function Server:kill_after(seconds) return self:signal_after("KILL", seconds) end

-- Is every thread of pid stopped (state T)?
local function all_stopped(pid)
  local _, out = run("cat /proc/" .. pid .. "/task/*/stat 2>/dev/null")
  local n = 0
  for state in out:gmatch("%) (%a) ") do
    if state ~= "T" and state ~= "t" then return false end
    n = n + 1
  end
  return n > 0
end

-- SIGSTOP takes effect thread by thread, a little after kill(2) returns:
-- wait (up to 5 s) until every thread of etcd has stopped, so that nothing
-- sent from here on is answered.
function Server:pause()
  if not self:is_running() then return self end
  signal(self.pid, "STOP")
  local deadline = now() + 5
  while not all_stopped(self.pid) do
    if now() > deadline then error("pause: etcd (pid " .. self.pid .. ") did not stop", 2) end
    M.sleep(0.01)
  end
  return self
end
function Server:resume() if self.pid then signal(self.pid, "CONT") end; return self end

local function check_member(m)
  if not proc_running(m.pid, "etcd") then
    local log = read_file(m.log_file) or ""
    local conflict = log:find("address already in use", 1, true) ~= nil
    return false, string.format("etcd %s (pid %s) exited during start-up%s; log tail:\n%s",
      m.name, tostring(m.pid), conflict and " (port already in use)" or "",
      tail(log, 30)), conflict
  end
  return true
end

-- Wait until every member listens on its own two ports (checked through
-- /proc, so a foreign server on a port we lost cannot fool us) and then
-- answers `etcdctl endpoint health`.
-- Returns true, or false, message, port_conflict.
local function wait_healthy(members, timeout)
  timeout = timeout or M.start_timeout
  local deadline = now() + timeout
  local eps = {}
  for i, m in ipairs(members) do eps[i] = m.endpoint end
  local tls_opts = { dial_timeout = "1s", command_timeout = "2s",
                     tls = members[1].tls or false, client_cert = members[1].client_cert_auth }
  local listening = {}
  local last = "(no health check yet: not listening on its ports)"
  while true do
    local all = true
    for _, m in ipairs(members) do
      local ok, msg, conflict = check_member(m)
      if not ok then return false, msg, conflict end
      if not listening[m] then
        listening[m] = owns_listener(m.pid, m.client_port) and owns_listener(m.pid, m.peer_port)
        all = all and listening[m]
      end
    end
    if all then
      local ok, out, err = M.etcdctl(eps, tls_opts, "endpoint", "health")
      last = out .. err
      if ok then return true end
    end
    if now() > deadline then
      local msgs = { string.format("etcd not healthy after %s s; last health check:\n%s",
        tostring(timeout), last) }
      for _, m in ipairs(members) do
        msgs[#msgs + 1] = string.format("--- %s (pid %s) log tail:\n%s", m.name,
          tostring(m.pid), m:log_tail(30))
      end
      return false, table.concat(msgs, "\n"), false
    end
    M.sleep(0.05)
  end
end

function Server:wait_healthy(timeout)
  local ok, msg = wait_healthy({ self }, timeout)
  if not ok then error(msg, 2) end
  return self
end

function Server:restart(opts)
  opts = opts or {}
  self:_terminate("TERM", opts.grace or M.stop_grace)
  if not os.rename(self.dir, self.dir) then
    error("restart: " .. self.dir .. " is gone (stopped without keep_data?)", 2)
  end
  self:_spawn("existing")
  if opts.wait ~= false then
    local ok, msg = wait_healthy({ self }, opts.timeout)
    if not ok then error("restart failed: " .. msg, 2) end
  end
  return self
end

-- Make n member objects (dirs + ports, nothing started).
local function new_members(n, opts)
  -- tls = true: make the certificates once (port-race retries reuse them)
  if opts.tls == true then opts.tls = M.make_certs() end
  local tls = opts.tls or nil
  if tls and (type(tls) ~= "table" or not tls.ca or not tls.server or not tls.server_key) then
    error("start_etcd: opts.tls must be a table from testing.make_certs() (or true)", 4)
  end
  local ports = M.pick_ports(2 * n)
  local token = unique("lua-etcd-spec")
  local members, ic = {}, {}
  for i = 1, n do
    local dir = mktemp()
    local name = (n == 1 and opts.name) or ((opts.name or "member") .. i)
    local m = setmetatable({
      name = name,
      dir = dir,
      data_dir = dir .. "/data",
      log_file = dir .. "/etcd.log",
      pid_file = dir .. "/etcd.pid",
      client_port = ports[2 * i - 1],
      peer_port = ports[2 * i],
      token = token,
      opts = opts,
      index = i,
    }, Server)
    m.endpoint = "127.0.0.1:" .. m.client_port
    m.endpoints = { m.endpoint }
    if tls then
      m.tls = tls
      m.client_cert_auth = opts.client_cert_auth and true or false
      m.https_endpoint = "https://" .. m.endpoint
      m.https_endpoints = { m.https_endpoint }
      m.client_url = m.https_endpoint
    else
      m.client_url = "http://" .. m.endpoint
    end
    m.peer_url = "http://127.0.0.1:" .. m.peer_port
    m.guard_pid = start_guardian(dir)
    members[i] = m
    ic[i] = name .. "=" .. m.peer_url
  end
  for _, m in ipairs(members) do m.initial_cluster = table.concat(ic, ",") end
  return members
end

local function start_members(n, opts)
  opts = opts or {}
  local attempts = opts.attempts or M.start_attempts
  local errs = {}
  for attempt = 1, attempts do
    local members = new_members(n, opts)
    local perr, healthy, msg, conflict = pcall(function()
      for _, m in ipairs(members) do m:_spawn("new") end
      return wait_healthy(members, opts.timeout)
    end)
    if perr and healthy == true then return members end
    if not perr then msg, conflict = tostring(healthy), false end
    for _, m in ipairs(members) do m:_terminate("KILL", 5) end
    for _, m in ipairs(members) do m:stop() end
    errs[#errs + 1] = string.format("attempt %d: %s", attempt, msg)
    if not conflict then break end
  end
  error("could not start etcd:\n" .. table.concat(errs, "\n"), 3)
end

--- start_etcd(opts) -> srv: start one etcd (a single-member cluster) and
-- wait until it is healthy; raises with etcd's log tail when it cannot
-- start. opts: see the top of this file. Also `testing.start`.
function M.start_etcd(opts)
  return start_members(1, opts)[1]
end
M.start = M.start_etcd

-- ---------------------------------------------------------------------------
-- clusters

local Cluster = {}
Cluster.__index = Cluster

--- etcd_fixture(set[, opts]), also `testing.fixture`: inside a busted
-- describe block, registers a setup that starts an etcd and a client of it
-- and hands them to set(srv, cli), and a teardown that closes the client,
-- stops etcd and calls set(nil, nil) (teardown runs when tests fail too).
-- opts.etcd: start_etcd's options; opts.client: etcd.new's options besides
-- `endpoints`; opts.cluster = n: start a cluster of n members instead
-- (start_cluster; srv is then the cluster object and cli a client of every
-- member).
function M.etcd_fixture(set, opts)
  opts = opts or {}
  -- busted gives each spec file its own environment (setup, teardown, it):
  -- take them from the calling describe block's _ENV (Lua 5.1: its fenv)
  local env = _G
  local caller = debug.getinfo(2, "f").func
  local getfenv = rawget(_G, "getfenv")
  if getfenv then env = getfenv(caller) end
  for i = 1, getfenv and 0 or 255 do
    local name, v = debug.getupvalue(caller, i)
    if not name then break end
    if name == "_ENV" then env = v break end
  end
  local setup, teardown = env.setup or rawget(_G, "setup"), env.teardown or rawget(_G, "teardown")
  if not (setup and teardown) then
    error("etcd_fixture: call it inside a busted describe block (no setup/teardown found)", 2)
  end
  local srv, cli
  setup(function()
    local etcd = require "etcd"
    if opts.cluster then
      srv = M.start_cluster(opts.cluster == true and 3 or opts.cluster, opts.etcd or {})
    else
      srv = M.start_etcd(opts.etcd or {})
    end
    local o = { endpoints = srv.endpoints }
    for k, v in pairs(opts.client or {}) do o[k] = v end
    local ok, c, err = pcall(etcd.new, o)
    if not (ok and c) then
      srv:stop()
      srv = nil
      error(ok and err or c, 0)
    end
    cli = c
    set(srv, cli)
  end)
  teardown(function()
    if cli then cli:close() end
    if srv then srv:stop() end
    srv, cli = nil, nil
    set(nil, nil)
  end)
end
M.fixture = M.etcd_fixture

--- start_cluster([n[, opts]]) -> c: start n members (default 3) as one
-- cluster and wait until all are healthy. opts: as start_etcd's (opts.name
-- is the prefix of the members' names). The cluster object: c.members[i]
-- (servers), c.endpoints, c:stop(), c:leader_index(), ... (the top of this
-- file).
function M.start_cluster(n, opts)
  n = n or 3
  local members = start_members(n, opts)
  local c = setmetatable({ members = members, endpoints = {}, token = members[1].token }, Cluster)
  for i, m in ipairs(members) do c.endpoints[i] = m.endpoint end
  c.endpoint = c.endpoints[1]
  if members[1].tls then
    c.tls, c.client_cert_auth, c.https_endpoints = members[1].tls, members[1].client_cert_auth, {}
    for i, m in ipairs(members) do c.https_endpoints[i] = m.https_endpoint end
  end
  return c
end

-- A client of every member, in use on member i: i's endpoint comes first
-- and is called first (a client otherwise starts on whichever member
-- connected first). opts: etcd.new's options besides `endpoints`. Returns
-- the client and member i's id.
function Cluster:client_on(i, opts)
  local etcd = require "etcd"
  local o = { endpoints = { self.members[i].endpoint } }
  for k, m in ipairs(self.members) do if k ~= i then o.endpoints[#o.endpoints + 1] = m.endpoint end end
  for k, v in pairs(opts or {}) do o[k] = v end
  local cli = assert(etcd.new(o))
  return cli, assert(cli:status(o.endpoints[1])).header.member_id
end

-- A new member for this cluster, neither added nor started: its ports and
-- dirs, and an --initial-cluster naming the members and itself. Add it
-- (cli:member_add{ m.peer_url }), then start it with m:start_joining().
-- Plain (non-TLS) clusters only.
function Cluster:new_member()
  if self.tls then error("new_member: TLS clusters are not supported", 2) end
  local first = self.members[1]
  local ports = M.pick_ports(2)
  local dir = mktemp()
  local i = #self.members + 1
  local m = setmetatable({
    name = "joined" .. i,
    dir = dir,
    data_dir = dir .. "/data",
    log_file = dir .. "/etcd.log",
    pid_file = dir .. "/etcd.pid",
    client_port = ports[1],
    peer_port = ports[2],
    token = first.token,
    opts = first.opts,
    index = i,
  }, Server)
  m.endpoint = "127.0.0.1:" .. m.client_port
  m.endpoints = { m.endpoint }
  m.client_url = "http://" .. m.endpoint
  m.peer_url = "http://127.0.0.1:" .. m.peer_port
  m.guard_pid = start_guardian(dir)
  local ic = {}
  for _, x in ipairs(self.members) do ic[#ic + 1] = x.name .. "=" .. x.peer_url end
  ic[#ic + 1] = m.name .. "=" .. m.peer_url
  m.initial_cluster = table.concat(ic, ",")
  return m
end

-- Start a member made by Cluster:new_member (after it was added): it joins
-- the running cluster (--initial-cluster-state existing). Does not wait.
function Server:start_joining()
  self:_spawn("existing")
  return self
end

-- One member after the other: SIGTERM to all members at once makes one of
-- them hang for the whole grace period (~5 s); one by one each takes ~0.1 s.
function Cluster:stop(opts)
  for _, m in ipairs(self.members) do m:stop(opts) end
  return self
end

function Cluster:kill()
  for _, m in ipairs(self.members) do m:kill() end
  return self
end

function Cluster:wait_healthy(timeout)
  local ok, msg = wait_healthy(self.members, timeout)
  if not ok then error(msg, 2) end
  return self
end

-- Restart every member that is not running, then wait for all to be healthy.
function Cluster:restart(opts)
  opts = opts or {}
  for _, m in ipairs(self.members) do
    if not m:is_running() then m:restart { wait = false } end
  end
  if opts.wait ~= false then self:wait_healthy(opts.timeout) end
  return self
end

-- Index in self.members of the current leader, or nil.
function Cluster:leader_index()
  local eps = {}
  for _, m in ipairs(self.members) do
    if m:is_running() then eps[#eps + 1] = m.endpoint end
  end
  if #eps == 0 then return nil end
  local _, out = M.etcdctl(eps, { dial_timeout = "1s", command_timeout = "2s",
      tls = self.tls or false, client_cert = self.client_cert_auth },
    "endpoint", "status", "-w", "json")
  local by_ep, leader = {}, nil
  for chunk in out:gmatch('"Endpoint":"[^"]*".-"leader":%d+') do
    local ep = chunk:match('"Endpoint":"([^"]*)"')
    local id = chunk:match('"member_id":(%d+)')
    local l = chunk:match('"leader":(%d+)')
    if ep and id then by_ep[ep:gsub("^https?://", "")] = id end
    if not l or l == "0" then return nil end
    if leader and leader ~= l then return nil end   -- members disagree
    leader = l
  end
  if not leader then return nil end
  for i, m in ipairs(self.members) do
    if by_ep[m.endpoint] == leader then return i end
  end
  return nil
end

-- Wait until the running members agree on a running leader; returns its index.
function Cluster:wait_leader(timeout)
  local deadline = now() + (timeout or 10)
  while true do
    local i = self:leader_index()
    if i then return i end
    if now() > deadline then
      error("no leader after " .. tostring(timeout or 10) .. " s\n" .. self:log_tail(20), 2)
    end
    M.sleep(0.1)
  end
end

function Cluster:log_tail(n)
  local t = {}
  for _, m in ipairs(self.members) do
    t[#t + 1] = "--- " .. m.name .. ":\n" .. m:log_tail(n)
  end
  return table.concat(t, "\n")
end

-- ---------------------------------------------------------------------------
-- global cleanup

--- stop_all(): stop every server this module started and is still running
-- (keeping no data) and remove every tmpdir(). Runs by itself when the
-- module is collected or the Lua state is closed.
function M.stop_all()
  local list = {}
  for s in pairs(registry) do list[#list + 1] = s end
  for _, s in ipairs(list) do pcall(s.stop, s, { keep_data = false }) end
  for dir, gpid in pairs(tmpdirs) do
    kill_guardian(gpid)
    pcall(rm_rf, dir)
    tmpdirs[dir] = nil
  end
end

-- Best effort when the Lua state closes normally (busted exits via
-- os.exit(code, true)), or when busted's file insulation drops this module.
-- (Lua 5.1 runs __gc for userdata only: a newproxy there.)
local function sentinel(gc)
  local newproxy = rawget(_G, "newproxy")
  if not newproxy then return setmetatable({}, { __gc = gc }) end
  local u = newproxy(true)
  getmetatable(u).__gc = gc
  return u
end
M._sentinel = sentinel(function() pcall(M.stop_all) end)

return M

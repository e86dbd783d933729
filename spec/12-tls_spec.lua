-- Connection security (issue 5): TLS and mutual TLS against a REAL etcd 3.4
-- serving https://, with a throw-away PKI made by openssl at test time
-- (helpers.make_certs: a CA, a server certificate with SAN IP:127.0.0.1 and
-- DNS:localhost, a client certificate, and an unrelated second CA with its own
-- client certificate for the negative cases).
--
-- Contract: etcd.new{ endpoints, tls = { ca, cert, key, server_name } }; ca,
-- cert and key are paths or inline PEM text; "https://h:p" endpoints, or plain
-- "h:p" ones with a tls table, use TLS; without ca the system roots are used;
-- verification is always on. A TLS failure gives nil, msg, code within
-- dial_timeout, with a message that says it is a TLS problem; gRPC's own log
-- lines stay off stderr. Misuse raises.
local helpers = require "helpers"
local etcd = require "etcd"

local DIAL = 2   -- dial_timeout of every client here (seconds)

local function slurp(path) return assert(helpers.read_file(path)) end

local function tlsish(msg)
  local m = tostring(msg):lower()
  return m:find("ssl", 1, true) or m:find("tls", 1, true) or m:find("certificate", 1, true)
      or m:find("handshake", 1, true)
end

-- etcd.new(opts) must fail with nil, TLS-ish msg, code within DIAL + 1 s.
local function assert_tls_failure(opts)
  opts.dial_timeout = opts.dial_timeout or DIAL
  local t0 = helpers.now()
  local cli, msg, code = etcd.new(opts)
  local took = helpers.now() - t0
  if cli then cli:close() end
  assert.is_nil(cli, "etcd.new succeeded where it must fail with a TLS error")
  assert.is_string(msg)
  assert.is_string(code)
  assert.is_truthy(tlsish(msg),
    ("the message does not say it is a TLS problem: %q (code %s)"):format(msg, tostring(code)))
  assert.is_true(took <= opts.dial_timeout + 1,
    ("etcd.new took %.2f s (dial_timeout %g s): %s"):format(took, opts.dial_timeout, msg))
  return msg, code
end

-- put, get, a watch event and a keep-alive on cli, all over TLS.
local function exercise(cli, prefix)
  local key = prefix .. "/k"
  local p = assert(cli:put(key, "v1"))
  assert.is_number(p.header.revision)
  local r = assert(cli:get(key))
  assert.equal(1, r.count)
  assert.equal("v1", r.kvs[1].value)

  local w = helpers.defer(assert(cli:watch(prefix .. "/w")))
  assert(cli:put(prefix .. "/w", "event"))
  local wr = assert(w:next(5))
  assert.equal(1, #wr.events)
  assert.equal("PUT", wr.events[1].type)
  assert.equal(prefix .. "/w", wr.events[1].kv.key)
  assert.equal("event", wr.events[1].kv.value)

  local l = assert(cli:grant(10))
  local ko = assert(cli:keepalive_once(l.id))
  assert.equal(l.id, ko.id)
  assert.is_true(ko.ttl > 0)
  local ka = helpers.defer(assert(cli:keepalive(l.id)))
  local kr = assert(ka:next(5))
  assert.equal(l.id, kr.id)
  assert.is_true(kr.ttl > 0)
  assert(cli:revoke(l.id))
  -- closed on return, as `local ka <close>` and `local w <close>` would be
  helpers.close_now(ka)
  helpers.close_now(w)
end

describe("TLS", function()
  local certs, srv, msrv   -- srv: TLS; msrv: TLS + --client-cert-auth

  setup(function()
    certs = helpers.make_certs()
    srv = helpers.start_etcd { tls = certs }
    msrv = helpers.start_etcd { tls = certs, client_cert_auth = true }
  end)
  teardown(function()
    if srv then srv:stop() end
    if msrv then msrv:stop() end
    helpers.stop_all()
  end)

  describe("the harness", function()
    it("serves https:// and etcdctl reaches it with the CA (and client cert)", function()
      assert.matches("^127%.0%.0%.1:%d+$", srv.endpoint)
      assert.equal("https://" .. srv.endpoint, srv.https_endpoint)
      assert.equal(srv.https_endpoint, srv.client_url)
      assert.equal(certs, srv.tls)
      assert.is_true((helpers.etcdctl(srv, "put", "harness/tls", "1")))
      assert.is_true((helpers.etcdctl(msrv, "put", "harness/mtls", "1")))
      -- msrv really demands a client certificate
      local ok = helpers.etcdctl(msrv, { client_cert = false, dial_timeout = "1s", command_timeout = "2s" },
        "get", "harness/mtls")
      assert.is_false(ok)
    end)
  end)

  describe("connects", function()
    it("with the CA given as a path (https:// endpoint)", function()
      local cli = helpers.defer(assert(etcd.new { endpoints = { srv.https_endpoint }, tls = { ca = certs.ca },
                                                  dial_timeout = DIAL }))
      local r = assert(cli:put("tls/path", "1"))
      assert.is_number(r.header.revision)
      assert.equal("1", assert(cli:get("tls/path")).kvs[1].value)
    end)

    it("with the CA given inline as PEM text, on a plain host:port endpoint", function()
      local cli = helpers.defer(assert(etcd.new { endpoints = { srv.endpoint }, tls = { ca = slurp(certs.ca) },
                                                  dial_timeout = DIAL }))
      assert(cli:put("tls/inline", "1"))
      assert.equal("1", assert(cli:get("tls/inline")).kvs[1].value)
    end)

    it("put, get, watch and keep-alive work over TLS", function()
      local cli = helpers.defer(assert(etcd.new { endpoints = { srv.https_endpoint }, tls = { ca = certs.ca },
                                                  dial_timeout = DIAL }))
      exercise(cli, "tls/ops")
    end)

    it("mutual TLS with client cert and key as paths", function()
      local cli = helpers.defer(assert(etcd.new { endpoints = { msrv.https_endpoint },
        tls = { ca = certs.ca, cert = certs.client, key = certs.client_key }, dial_timeout = DIAL }))
      exercise(cli, "mtls/path")
    end)

    it("mutual TLS with CA, client cert and key inline", function()
      local cli = helpers.defer(assert(etcd.new { endpoints = { msrv.endpoint },
        tls = { ca = slurp(certs.ca), cert = slurp(certs.client), key = slurp(certs.client_key) },
        dial_timeout = DIAL }))
      exercise(cli, "mtls/inline")
    end)

    it("with server_name = 'localhost' (a DNS SAN of the server certificate)", function()
      local cli = helpers.defer(assert(etcd.new { endpoints = { srv.https_endpoint },
        tls = { ca = certs.ca, server_name = "localhost" }, dial_timeout = DIAL }))
      assert(cli:put("tls/sni", "1"))
      assert.equal("1", assert(cli:get("tls/sni")).kvs[1].value)
    end)
  end)

  describe("fails with a TLS message within dial_timeout", function()
    it("for a wrong CA", function()
      assert_tls_failure { endpoints = { srv.https_endpoint }, tls = { ca = certs.other_ca } }
    end)

    it("without a CA (the system roots do not trust the throw-away CA)", function()
      assert_tls_failure { endpoints = { srv.https_endpoint } }
      assert_tls_failure { endpoints = { srv.endpoint }, tls = {} }
    end)

    it("for server_name = 'wrong.example' (not in the certificate)", function()
      assert_tls_failure { endpoints = { srv.https_endpoint },
        tls = { ca = certs.ca, server_name = "wrong.example" } }
    end)

    it("without a client certificate where the server demands one", function()
      assert_tls_failure { endpoints = { msrv.https_endpoint }, tls = { ca = certs.ca } }
    end)

    it("for a client certificate from another CA", function()
      assert_tls_failure { endpoints = { msrv.https_endpoint },
        tls = { ca = certs.ca, cert = certs.other_client, key = certs.other_client_key } }
    end)

    it("for a plaintext client against the TLS port", function()
      assert_tls_failure { endpoints = { "http://" .. srv.endpoint } }
      assert_tls_failure { endpoints = { srv.endpoint } }
    end)
  end)

  describe("gRPC's own TLS log lines", function()
    -- like spec/01-client_spec.lua: one failing etcd.new in a fresh child Lua
    local function stderr_of(env)
      local script = ([[local etcd = require "etcd"
local cli, msg = etcd.new { endpoints = { %q }, tls = { ca = %q }, dial_timeout = 1 }
assert(not cli, "etcd.new must fail")
io.stdout:write(msg)]]):format(srv.https_endpoint, certs.other_ca)
      local status, out, err = helpers.run_lua(script, { env = env })
      return status == 0, err, out
    end

    it("stay off stderr", function()
      local ok, err, out = stderr_of("")
      assert.is_true(ok, err)
      assert.truthy(tlsish(out), out)
      assert.equal("", err)
    end)

    it("stay off stderr, even at gRPC's debug verbosity", function()
      local ok, err, out = stderr_of("GRPC_VERBOSITY=debug GRPC_TRACE=all")
      assert.is_true(ok, err)
      assert.truthy(tlsish(out), out)
      assert.equal("", err)
    end)
  end)

  describe("misuse raises", function()
    it("tls that is not a table", function()
      assert.has_error(function() etcd.new { endpoints = { srv.endpoint }, tls = "x" } end,
        "etcd.new: option 'tls': table expected, got string")
      local ok, err = pcall(etcd.new, { endpoints = { srv.endpoint }, tls = "x" })
      assert.is_false(ok)
      assert.matches("tls", err)
    end)

    it("an unknown key in the tls table", function()
      local ok, err = pcall(etcd.new, { endpoints = { srv.endpoint }, tls = { caa = certs.ca } })
      assert.is_false(ok)
      assert.matches("unknown option", err)
      assert.matches("caa", err)
    end)

    it("a ca, cert or key path that cannot be read, naming the option", function()
      local missing = certs.dir .. "/no-such-file.pem"
      local ok, err = pcall(etcd.new, { endpoints = { srv.endpoint }, tls = { ca = missing } })
      assert.is_false(ok)
      assert.matches("etcd.new: option 'tls.ca': cannot read", err, 1, true)
      ok, err = pcall(etcd.new, { endpoints = { msrv.endpoint },
        tls = { ca = certs.ca, cert = certs.client, key = missing } })
      assert.is_false(ok)
      assert.matches("etcd.new: option 'tls.key': cannot read", err, 1, true)
      ok, err = pcall(etcd.new, { endpoints = { msrv.endpoint },
        tls = { ca = certs.ca, cert = missing, key = certs.client_key } })
      assert.is_false(ok)
      assert.matches("etcd.new: option 'tls.cert': cannot read", err, 1, true)
    end)

    it("a client cert without its key", function()
      local ok, err = pcall(etcd.new, { endpoints = { msrv.endpoint }, tls = { ca = certs.ca, cert = certs.client } })
      assert.is_false(ok)
      assert.matches("tls", err)
    end)
  end)
end)

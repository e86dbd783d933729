-- Hostile input: every public function and method with wrong types, nil,
-- NaN, ±inf, negative and huge numbers, floats for integers, unknown options,
-- keys with NUL and 0xff bytes, keys and values over etcd's limits, too many
-- txn ops, deeply nested txns, a watch on an empty range, calls on a closed
-- client, methods called with '.' instead of ':'. Each case either raises an
-- error (a string, at the caller's line, naming the function and the
-- argument or option) or returns nil, msg, code with the expected code; after
-- each group the same client still does a put/get round trip. The cases the
-- options fuzzer (fuzz/fuzz_options.c) found are at the end, as plain Lua.
local helpers = require "helpers"
local etcd = require "etcd"

local SPEC = "14%-hostile_spec%.lua:%d+: "
local NAN, INF = 0 / 0, math.huge
-- the extreme integers: int64 on 5.3+, +-2^53 where numbers are doubles
local MAXI, MINI = math.maxinteger or 2 ^ 53, math.mininteger or -2 ^ 53
local MiB = 1024 * 1024

local function pack(...) return helpers.pack(...) end
local function esc(s) return (s:gsub("%p", "%%%0")) end

-- Call f with args from a Lua frame of this file that is not a tail call, so
-- that an error raised at the caller's level carries this file's name.
local function try(f, args)
  return pcall(function()
    local r = helpers.pack(f(helpers.unpack(args, 1, args.n)))
    return r
  end)
end

-- f(args) must raise a string, at this file's line, "<fname>: <what>".
local function assert_raises(fname, what, f, args)
  local ok, err = try(f, args)
  assert(not ok, ("%s did not raise (expected %q)"):format(fname, what))
  assert.is_string(err)
  assert.matches(SPEC .. esc(fname) .. ": " .. what, err)
end

-- The outcome of a call that must not raise: nil, msg, code with `code`
-- (msg matching `msg` when given), or a result when code is nil.
local function assert_fails(code, msg, res, m, c)
  if code == nil then
    assert.is_not_nil(res, ("expected a result, got nil, %s, %s"):format(tostring(m), tostring(c)))
    return res
  end
  assert.is_nil(res, "expected nil, msg, " .. code)
  assert.is_string(m)
  assert.equal(code, c, m)
  if msg then assert.matches(msg, m) end
end

-- Values of every type, with the name check.lua gives them.
local function values_but(...)
  local skip = {}
  for _, t in ipairs { ... } do skip[t] = true end
  local all = {
    { nil, "nil" }, { true, "boolean" }, { 1, "integer" }, { 1.5, "float" }, { "s", "string" },
    { {}, "table" }, { print, "function" }, { coroutine.create(function() end), "thread" }, { io.stdout, "userdata" },
  }
  local out = {}
  for _, v in ipairs(all) do
    if not skip[v[2]] then out[#out + 1] = v end
  end
  return out
end

-- Numbers that are no integer (and what the message says they are).
local BAD_INTS = {
  { 1.5, "float" }, { NAN, "float" }, { INF, "float" }, { -INF, "float" }, { 2 ^ 63, "float" },
  { -2 ^ 64, "float" }, { "5", "string" }, { nil, "nil" }, { true, "boolean" }, { {}, "table" },
}
-- Ids that are none: neither an integer nor a decimal or "0x" string in range.
local BAD_IDS = {
  { 1.5, "float" }, { NAN, "float" }, { INF, "float" }, { -INF, "float" }, { 2 ^ 64, "float" },
  { "5x", "string" }, { "", "string" }, { "0x", "string" }, { " 5", "string" }, { "1.5", "string" },
  { "18446744073709551616", "string" }, { nil, "nil" }, { true, "boolean" }, { {}, "table" },
}
local ID_EXPECTED = "id %(an integer, or a decimal or 0x string%) expected"
-- Seconds that are not a non-negative number.
local BAD_SECONDS = {
  { -1, "%-1" }, { -0.5, "%-0%.5" }, { NAN, "%-?nan" }, { -INF, "%-inf" }, { "1", "string" }, { true, "boolean" },
  { {}, "table" },
}
-- Options arguments that are no options table.
local BAD_OPTS = {
  { "x", "options must be a plain table, got string" },
  { 1, "options must be a plain table, got integer" },
  { true, "options must be a plain table, got boolean" },
  { setmetatable({}, {}), "options must be a plain table, got table" },
  { { true }, "option names must be strings, got integer" },
  { { [1.5] = true }, "option names must be strings, got float" },
  { { prefx = true }, "unknown option 'prefx'" },
  { { [("o"):rep(2 * MiB)] = 1 }, 'unknown option "' .. ("o"):rep(64) .. '%.%.%."' },
  { { ["attempt to index"] = 1 }, 'unknown option "attempt to index"' },
  -- (%q: "a\0'b" on 5.2+, "a\000'b" on 5.1)
  { { ["a\0'b"] = 1 }, "unknown option " .. ("%q"):format("a\0'b") },
}

-- Placeholders filled in once the server runs.
local ENDPOINT = setmetatable({}, { __name = "endpoint placeholder" })

-- Every method of the client and what its arguments are:
--   args: valid arguments; opts: position of the options table;
--   str / text / int: positions of string / NUL-free string / integer arguments;
--   options: option name -> "boolean" | "int" | "count" | "string" | "enum" | "seconds".
local TIMEOUT = { timeout = "seconds" }
local function with(t)
  local o = { timeout = "seconds" }
  for k, v in pairs(t) do o[k] = v end
  return o
end
local GET_OPTS = with {
  prefix = "boolean", range_end = "string", from_key = "boolean", limit = "count", revision = "int",
  sort_target = "enum", sort_order = "enum", serializable = "boolean", keys_only = "boolean",
  count_only = "boolean", min_mod_revision = "int", max_mod_revision = "int", min_create_revision = "int",
  max_create_revision = "int",
}
local METHODS = {
  get = { args = { "hostile/k" }, str = { 1 }, opts = 2, options = GET_OPTS },
  get_value = { args = { "hostile/k" }, str = { 1 }, opts = 2,
                options = with { revision = "int", serializable = "boolean" } },
  put = { args = { "hostile/k", "v" }, str = { 1, 2 }, opts = 3,
          options = with { lease = "id", prev_kv = "boolean", ignore_value = "boolean", ignore_lease = "boolean" } },
  delete = { args = { "hostile/none" }, str = { 1 }, opts = 2, options = with { prev_kv = "boolean",
             prefix = "boolean", range_end = "string", from_key = "boolean" } },
  compact = { args = { 1 }, int = { 1 }, opts = 2, options = with { physical = "boolean" } },
  txn = { args = { {} }, opts = 2, options = TIMEOUT },
  exec = { args = { "OP" }, opts = 2, options = TIMEOUT },
  batch = { args = { "OPS" }, opts = 2, options = with { atomic = "boolean" } },
  grant = { args = { 60 }, int = { 1 }, opts = 2, options = with { id = "id" } },
  revoke = { args = { 1 }, id = { 1 }, opts = 2, options = TIMEOUT },
  time_to_live = { args = { 1 }, id = { 1 }, opts = 2, options = with { keys = "boolean" } },
  leases = { args = {}, opts = 1, options = TIMEOUT },
  keepalive = { args = { 1 }, id = { 1 }, opts = 2, options = TIMEOUT },
  keepalive_once = { args = { 1 }, id = { 1 }, opts = 2, options = TIMEOUT },
  watch = { args = { "hostile/w" }, str = { 1 }, opts = 2, options = with {
    prefix = "boolean", range_end = "string", from_key = "boolean", start_revision = "int", prev_kv = "boolean",
    progress_notify = "boolean", fragment = "boolean" } },
  member_list = { args = {}, opts = 1, options = TIMEOUT },
  member_add = { args = { { "http://127.0.0.1:1" } }, opts = 2, options = with { is_learner = "boolean" } },
  member_remove = { args = { 1 }, id = { 1 }, opts = 2, options = TIMEOUT },
  member_update = { args = { 1, { "http://127.0.0.1:1" } }, id = { 1 }, opts = 3, options = TIMEOUT },
  member_promote = { args = { 1 }, id = { 1 }, opts = 2, options = TIMEOUT },
  status = { args = { ENDPOINT }, str = { 1 }, opts = 2, options = TIMEOUT },
  alarm_list = { args = {}, opts = 1, options = TIMEOUT },
  alarm_disarm = { args = { { member_id = 1, alarm = "nospace" } }, opts = 2, options = TIMEOUT },
  defragment = { args = { ENDPOINT }, str = { 1 }, opts = 2, options = TIMEOUT },
  hash_kv = { args = { ENDPOINT, 0 }, str = { 1 }, int = { 2 }, opts = 3, options = TIMEOUT },
  move_leader = { args = { 1 }, id = { 1 }, opts = 2, options = TIMEOUT },
  snapshot = { args = { "/nonexistent/hostile.db" }, text = { 1 }, opts = 2, options = with { endpoint = "string" } },
  sync = { args = {}, opts = 1, options = TIMEOUT },
  endpoint_status = { args = {}, opts = 1, options = TIMEOUT },
  endpoint_health = { args = {}, opts = 1, options = TIMEOUT },
  auth_enable = { args = {}, opts = 1, options = TIMEOUT },
  auth_disable = { args = {}, opts = 1, options = TIMEOUT },
  user_add = { args = { "u", "p" }, text = { 1, 2 }, opts = 3, options = with { no_password = "boolean" } },
  user_get = { args = { "u" }, text = { 1 }, opts = 2, options = TIMEOUT },
  user_list = { args = {}, opts = 1, options = TIMEOUT },
  user_delete = { args = { "u" }, text = { 1 }, opts = 2, options = TIMEOUT },
  user_change_password = { args = { "u", "p" }, text = { 1, 2 }, opts = 3, options = TIMEOUT },
  user_grant_role = { args = { "u", "r" }, text = { 1, 2 }, opts = 3, options = TIMEOUT },
  user_revoke_role = { args = { "u", "r" }, text = { 1, 2 }, opts = 3, options = TIMEOUT },
  role_add = { args = { "r" }, text = { 1 }, opts = 2, options = TIMEOUT },
  role_get = { args = { "r" }, text = { 1 }, opts = 2, options = TIMEOUT },
  role_list = { args = {}, opts = 1, options = TIMEOUT },
  role_delete = { args = { "r" }, text = { 1 }, opts = 2, options = TIMEOUT },
  role_grant_permission = { args = { "r", "k", nil, "read", n = 4 }, text = { 1 }, str = { 2 }, opts = 5,
                            options = with { prefix = "boolean", from_key = "boolean" } },
  role_revoke_permission = { args = { "r", "k", nil, n = 3 }, text = { 1 }, str = { 2 }, opts = 4,
                             options = with { prefix = "boolean", from_key = "boolean" } },
  request_progress = { args = {} },
  close = { args = {} },
  endpoints = { args = {} },
  pollfd = { args = {} },
  events = { args = {} },
  timeout = { args = {} },
}

describe("hostile input", function()
  local srv, cli
  local rounds = 0

  -- The client still does a put/get round trip.
  local function still_usable()
    rounds = rounds + 1
    local key, value = "hostile/alive/" .. rounds, ("v%d\0\255"):format(rounds)
    assert(cli:put(key, value))
    local res = assert(cli:get(key))
    assert.equal(value, res.kvs[1].value)
  end

  -- Arguments of a method row with the placeholders filled in, and the value
  -- `v` at position `at` (when given).
  local function args_of(m, at, v)
    local a = { n = math.max(m.args.n or #m.args, at or 0) }
    for i = 1, a.n do
      local x = m.args[i]
      if x == ENDPOINT then x = srv.endpoint end
      if x == "OP" then x = etcd.op.get("hostile/k") end
      if x == "OPS" then x = { etcd.op.get("hostile/k") } end
      a[i] = x
    end
    if at then a[at] = v end
    return a
  end

  local function method(name, args)
    local f = etcd.Client[name]
    assert.is_function(f, name)
    local a = { n = args.n + 1, cli }
    for i = 1, args.n do a[i + 1] = args[i] end
    return f, a
  end

  lazy_setup(function()
    srv = helpers.start_etcd()
    cli = assert(etcd.new { endpoints = srv.endpoints })
  end)
  lazy_teardown(function()
    if cli then cli:close() end
    if srv then srv:stop() end
    cli, srv = nil, nil -- nothing of this file stays alive for the later ones
  end)

  -- -------------------------------------------------------------------------
  describe("every method of the client", function()
    local names = {}
    for name in pairs(METHODS) do names[#names + 1] = name end
    table.sort(names)

    it("lists every public method of etcd.Client (this table is complete)", function()
      for name, f in pairs(etcd.Client) do
        if type(f) == "function" and not name:find("^_") then
          assert.is_table(METHODS[name], "no hostile cases for cli:" .. name)
        end
      end
    end)

    it("raises for arguments of the wrong type, naming the method and the argument", function()
      for _, name in ipairs(names) do
        local m = METHODS[name]
        for _, at in ipairs(m.str or {}) do
          for _, v in ipairs(values_but("string")) do
            local f, a = method(name, args_of(m, at, v[1]))
            assert_raises(name, ("bad argument #%d %%(.-%%): string expected, got %s"):format(at, v[2]), f, a)
          end
        end
        for _, at in ipairs(m.text or {}) do
          for _, v in ipairs(values_but("string")) do
            local f, a = method(name, args_of(m, at, v[1]))
            assert_raises(name, ("bad argument #%d %%(.-%%): string expected, got %s"):format(at, v[2]), f, a)
          end
          -- etcd's protobuf `string` fields: no NUL byte
          local f, a = method(name, args_of(m, at, "a\0b"))
          assert_raises(name, ("bad argument #%d %%(.-%%): string without NUL bytes expected, got a string with a NUL byte")
            :format(at), f, a)
        end
        for _, at in ipairs(m.int or {}) do
          for _, v in ipairs(BAD_INTS) do
            local f, a = method(name, args_of(m, at, v[1]))
            assert_raises(name, ("bad argument #%d %%(.-%%): integer expected, got %s"):format(at, v[2]), f, a)
          end
        end
        for _, at in ipairs(m.id or {}) do
          for _, v in ipairs(BAD_IDS) do
            local f, a = method(name, args_of(m, at, v[1]))
            assert_raises(name, ("bad argument #%d %%(.-%%): %s, got %s"):format(at, ID_EXPECTED, v[2]), f, a)
          end
        end
      end
      still_usable()
    end)

    it("raises for an options argument that is no options table, or names an unknown option", function()
      for _, name in ipairs(names) do
        local m = METHODS[name]
        if m.opts then
          for _, v in ipairs(BAD_OPTS) do
            local f, a = method(name, args_of(m, m.opts, v[1]))
            assert_raises(name, v[2], f, a)
          end
        end
      end
      still_usable()
    end)

    it("raises for options of the wrong type or out of range", function()
      local bad = {
        boolean = { { 1, "boolean expected, got integer" }, { "true", "boolean expected, got string" },
                    { NAN, "boolean expected, got float" } },
        int = { { 1.5, "integer expected, got float" }, { NAN, "integer expected, got float" },
                { INF, "integer expected, got float" }, { 2 ^ 63, "integer expected, got float" },
                { "1", "integer expected, got string" } },
        id = { { 1.5, ID_EXPECTED .. ", got float" }, { NAN, ID_EXPECTED .. ", got float" },
               { "1.5", ID_EXPECTED .. ", got string" }, { true, ID_EXPECTED .. ", got boolean" } },
        count = { { -1, "non%-negative integer expected, got %-1" }, { 1.5, "non%-negative integer expected, got 1%.5" },
                  { MINI, "non%-negative integer expected" }, { "5", "non%-negative integer expected, got string" },
                  { INF, "non%-negative integer expected, got inf" } },
        string = { { 1, "string expected, got integer" }, { false, "string expected, got boolean" } },
        enum = { { "size", 'expected one of .*, got "size"' }, { 1, "expected one of .*, got integer" },
                 { ("x"):rep(MiB), "expected one of .*, got \"xxxx" } },
      }
      for _, name in ipairs(names) do
        local m = METHODS[name]
        for opt, kind in pairs(m.options or {}) do
          local cases = kind == "seconds" and {} or bad[kind]
          if kind == "seconds" then
            for _, v in ipairs(BAD_SECONDS) do
              cases[#cases + 1] = { v[1], "non%-negative number of seconds expected, got " .. v[2] }
            end
          end
          for _, v in ipairs(cases) do
            local f, a = method(name, args_of(m, m.opts, { [opt] = v[1] }))
            assert_raises(name, ("option '%s': %s"):format(opt, v[2]), f, a)
          end
        end
      end
      still_usable()
    end)

    it("raises when called with '.' instead of ':' (a bad self)", function()
      for _, name in ipairs(names) do
        -- the last: a forged client, with the client's metatable but no client in it
        for _, self in ipairs { "hostile/k", {}, 1, setmetatable({}, etcd.Error), setmetatable({}, etcd.Client) } do
          local m = METHODS[name]
          local a = args_of(m)
          local args = { n = a.n + 1, self }
          for i = 1, a.n do args[i + 1] = a[i] end
          assert_raises(name, "bad self %(etcd%.client expected, got %a+: call it as obj:" .. name .. "%(%.%.%.%)%)",
            etcd.Client[name], args)
        end
        local ok, err = try(etcd.Client[name], pack())
        assert.is_false(ok)
        assert.matches(SPEC .. name .. ": bad self %(etcd%.client expected, got nil", err)
      end
      still_usable()
    end)

    it("a closed client: every call returns nil, 'etcd: client is closed', 'closed'", function()
      local c = assert(etcd.new { endpoints = srv.endpoints })
      local fd = c:pollfd()
      c:close()
      for _, name in ipairs(names) do
        local m = METHODS[name]
        local a = args_of(m)
        if name == "close" then
          assert.equal(0, select("#", c:close())) -- idempotent, returns nothing
        elseif name == "endpoints" then
          assert.same({ srv.endpoint }, c:endpoints())
        elseif name == "pollfd" then
          assert.equal(fd, c:pollfd()) -- the fd stays the client's until it is collected
        elseif name == "events" or name == "timeout" then
          -- cqueues' polling protocol: a closed client stays pollable (its fd
          -- was signalled at close)
          assert.equal(name == "events" and "r" or nil, c[name](c))
        else
          local res, msg, code = c[name](c, helpers.unpack(a, 1, a.n))
          assert_fails("closed", "^etcd: client is closed$", res, msg, code)
        end
      end
      -- and misuse still raises first
      assert_raises("get", "bad argument #1", etcd.Client.get, pack(c, 1))
      still_usable()
    end)
  end)

  -- -------------------------------------------------------------------------
  describe("numbers etcd takes or refuses", function()
    it("KV: revisions, limits and leases at the extremes", function()
      local put = assert(cli:put("hostile/n", "1"))
      local rev = put.header.revision
      -- etcd reads a revision <= 0 as "the current one"
      assert.equal("1", assert(cli:get("hostile/n", { revision = -1 })).kvs[1].value)
      assert.equal("1", assert(cli:get("hostile/n", { revision = MINI })).kvs[1].value)
      assert_fails("future_revision", "future revision", cli:get("hostile/n", { revision = MAXI }))
      assert_fails("future_revision", nil, cli:get("hostile/n", { revision = rev + 1000 }))
      -- limits: 0 is "no limit"; huge ones are fine; floats with an integer value too
      assert.equal(1, #assert(cli:get("hostile/n", { limit = MAXI })).kvs)
      assert.equal(1, #assert(cli:get("hostile/n", { limit = 2 ^ 53 })).kvs)
      assert.equal(1, #assert(cli:get("hostile/n", { limit = 0, revision = rev + 0.0 })).kvs)
      assert.equal(1, #assert(cli:get("hostile/n", { min_mod_revision = MINI, max_mod_revision = MAXI })).kvs)
      assert.equal(0, #assert(cli:get("hostile/n", { min_create_revision = MAXI })).kvs)
      -- leases that do not exist
      for _, id in ipairs { -2, MAXI, MINI } do
        assert_fails("lease_not_found", "requested lease not found", cli:put("hostile/n", "2", { lease = id }))
      end
      assert.equal("1", assert(cli:get("hostile/n")).kvs[1].value)
      -- compaction: below the first revision, far ahead
      assert_fails("compacted", "has been compacted", cli:compact(-1))
      assert_fails("compacted", nil, cli:compact(MINI))
      assert_fails("future_revision", nil, cli:compact(MAXI))
      assert_fails("future_revision", nil, cli:compact(2 ^ 53))
      still_usable()
    end)

    it("a deadline that ran out inside etcd (Go's bare context error, status UNKNOWN) is a timeout", function()
      -- what etcd sends when the propagated deadline expires in its handler:
      -- rare against a fast server, common under valgrind with timeout = 0
      local res, msg, code = require("etcd.errors").fail("context deadline exceeded", "UNKNOWN")
      assert_fails("timeout", "^etcd: deadline exceeded %(context deadline exceeded%)$", res, msg, code)
      -- other UNKNOWN failures stay UNKNOWN
      assert_fails("UNKNOWN", nil, require("etcd.errors").fail("something else", "UNKNOWN"))
    end)

    it("timeouts: 0 ends at once (answered or not), math.huge and huge numbers mean no limit", function()
      for _ = 1, 20 do
        local t0 = helpers.now()
        local res, msg, code = cli:get("hostile/n", { timeout = 0 })
        assert.is_true(helpers.now() - t0 < 2)
        if not res then assert_fails("timeout", "deadline exceeded", res, msg, code) end
      end
      for _, t in ipairs { INF, 1e300, 2 ^ 63, MAXI, 1e9 + 1 } do
        assert(cli:get("hostile/n", { timeout = t }))
      end
      local c = assert(etcd.new { endpoints = srv.endpoints, dial_timeout = INF, timeout = 1e300 })
      assert(c:get("hostile/n"))
      c:close()
      still_usable()
    end)

    it("leases: ids and TTLs at the extremes", function()
      -- etcd raises a TTL below its minimum and refuses one above its maximum
      local g = assert(cli:grant(-1))
      assert.is_true(g.ttl > 0)
      assert(cli:revoke(g.id))
      g = assert(cli:grant(MINI))
      assert.is_true(g.ttl > 0)
      assert(cli:revoke(g.id))
      assert_fails("OUT_OF_RANGE", "too large lease TTL", cli:grant(MAXI))
      -- a negative id is an id like another to etcd (int64)
      g = assert(cli:grant(60, { id = -7 }))
      assert.equal(etcd.id(-7), g.id)
      assert.equal(etcd.id(-7), assert(cli:time_to_live(-7)).id)
      assert(cli:revoke(-7))
      for _, id in ipairs { 0, -7, MAXI, MINI } do
        assert_fails("lease_not_found", "requested lease not found", cli:revoke(id))
        assert_fails("lease_not_found", "requested lease not found", cli:keepalive_once(id))
        assert.equal(-1, assert(cli:time_to_live(id)).ttl) -- etcd: TTL -1 for an unknown lease
      end
      -- a keep-alive of an unknown lease ends with lease_not_found, as above
      local ka = assert(cli:keepalive(MAXI))
      assert_fails("lease_not_found", "requested lease not found", ka:next(10))
      assert_fails("lease_not_found", nil, ka:next(0))
      ka:close()
      still_usable()
    end)

    it("cluster and maintenance: ids and revisions that match nothing", function()
      for _, id in ipairs { 0, -1, MAXI, MINI } do
        assert_fails("NOT_FOUND", "member not found", cli:member_remove(id))
        assert_fails("NOT_FOUND", "member not found", cli:member_promote(id))
        assert_fails("NOT_FOUND", "member not found", cli:member_update(id, { "http://127.0.0.1:1" }))
        assert_fails("FAILED_PRECONDITION", "bad leader transferee", cli:move_leader(id))
      end
      assert_fails("INVALID_ARGUMENT", "given member URLs are invalid", cli:member_add { "not a url" })
      assert_fails("INVALID_ARGUMENT", nil, cli:member_add { ("h"):rep(100000) })
      assert_fails("FAILED_PRECONDITION", "Peer URLs already exists", cli:member_add { srv.peer_url })
      assert.equal(1, #assert(cli:member_list()).members) -- nothing was added
      assert(cli:hash_kv(srv.endpoint, -1))
      assert(cli:hash_kv(srv.endpoint, 0))
      assert_fails("future_revision", nil, cli:hash_kv(srv.endpoint, MAXI))
      -- endpoints are the client's own, given the way etcd.new took them
      assert(cli:status("http://" .. srv.endpoint .. "/"))
      assert_raises("status", 'bad argument #1 %(endpoint%): "127%.0%.0%.1:1" is not one of the client\'s endpoints',
        etcd.Client.status, pack(cli, "127.0.0.1:1"))
      assert_raises("defragment", "bad argument #1 %(endpoint%): .* is not one of", etcd.Client.defragment,
        pack(cli, srv.endpoint .. "\0"))
      -- disarming an alarm that is not raised is no error
      assert(cli:alarm_disarm { member_id = MAXI, alarm = "NOSPACE" })
      assert_raises("alarm_disarm", "alarm%.member_id: " .. ID_EXPECTED .. ", got float", etcd.Client.alarm_disarm,
        pack(cli, { member_id = 1.5, alarm = "nospace" }))
      assert_raises("alarm_disarm", 'alarm%.alarm: expected one of .*, got "fire"', etcd.Client.alarm_disarm,
        pack(cli, { member_id = 1, alarm = "fire" }))
      still_usable()
    end)

    it("auth: names etcd refuses, names of 0xff bytes, long passwords", function()
      assert_fails("FAILED_PRECONDITION", "root user does not exist", cli:auth_enable())
      assert(cli:auth_disable()) -- already off: no error
      assert_fails("INVALID_ARGUMENT", "user name is empty", cli:user_add("", "p"))
      assert_fails("INVALID_ARGUMENT", "role name is empty", cli:role_add(""))
      assert_fails("FAILED_PRECONDITION", "user name not found", cli:user_get("hostile-nobody"))
      assert_fails("FAILED_PRECONDITION", "role name not found", cli:role_get("hostile-nobody"))
      -- binary (non-UTF-8) names are fine; so are keys of permissions with NUL and 0xff bytes
      assert(cli:user_add("u\255\1", ("p"):rep(1000)))
      assert.same({}, assert(cli:user_get("u\255\1")).roles)
      assert(cli:role_add("r\255"))
      assert(cli:role_grant_permission("r\255", "\0\255", "\255\255", "READWRITE"))
      assert(cli:role_grant_permission("r\255", "a\255", nil, "read", { prefix = true }))
      local perm = assert(cli:role_get("r\255")).perm
      table.sort(perm, function(a, b) return a.key < b.key end)
      assert.same({ { key = "\0\255", range_end = "\255\255", perm_type = "readwrite" },
                    { key = "a\255", range_end = "b", perm_type = "read" } }, perm)
      assert(cli:user_grant_role("u\255\1", "r\255"))
      assert.same({ "r\255" }, assert(cli:user_get("u\255\1")).roles)
      assert(cli:user_delete("u\255\1"))
      assert(cli:role_delete("r\255"))
      still_usable()
    end)
  end)

  -- -------------------------------------------------------------------------
  describe("keys and values", function()
    it("keys with NUL bytes and keys ending in 0xff round-trip: put, get, ranges, prefixes, delete", function()
      local keys = { "hx\0", "hx\0\0", "hx\255", "hx\255\0", "hx\255\255", "hx\255\255\255", "hx\0\255" }
      for i, k in ipairs(keys) do assert(cli:put(k, "v" .. i .. "\0\255")) end
      for i, k in ipairs(keys) do
        local res = assert(cli:get(k))
        assert.equal(1, res.count)
        assert.equal(k, res.kvs[1].key)
        assert.equal("v" .. i .. "\0\255", res.kvs[1].value)
      end
      local function got(key, opts)
        local t = {}
        for i, kv in ipairs(assert(cli:get(key, opts)).kvs) do t[i] = kv.key end
        return t
      end
      assert.same({ "hx\0", "hx\0\0", "hx\0\255", "hx\255", "hx\255\0", "hx\255\255", "hx\255\255\255" },
        got("hx", { prefix = true }))
      assert.same({ "hx\255", "hx\255\0", "hx\255\255", "hx\255\255\255" }, got("hx\255", { prefix = true }))
      assert.same({ "hx\255\255", "hx\255\255\255" }, got("hx\255\255", { prefix = true }))
      assert.same({ "hx\0", "hx\0\0", "hx\0\255" }, got("hx\0", { prefix = true }))
      assert.same({ "hx\0\0", "hx\0\255" }, got("hx\0\0", { range_end = "hx\255" }))
      assert.equal("hy", etcd.prefix_end("hx\255\255"))
      assert.equal("\0", etcd.prefix_end("\255\255")) -- no end: every key from there on
      -- a key of 0xff bytes only: its prefix range runs to the end of the keyspace
      assert(cli:put("\255\255", "top"))
      assert(cli:put("\255\255\1", "top2"))
      assert.same({ "\255\255", "\255\255\1" }, got("\255\255", { prefix = true }))
      assert.same({ "\255\255\1" }, got("\255\255\0", { from_key = true }))
      -- the key "\0" and the empty range end
      assert(cli:put("\0", "nul"))
      assert.equal("nul", assert(cli:get("\0")).kvs[1].value)
      -- txn compares and ops with such keys
      local t = assert(cli:txn {
        compare = { etcd.compare.value("hx\255", "=", "v3\0\255"), etcd.compare.version("hx\0", ">", 0, { prefix = true }) },
        success = { etcd.op.put("hx\0new\255", "\0"), etcd.op.get("hx\255", { prefix = true, count_only = true }) },
      })
      assert.is_true(t.succeeded)
      assert.equal(4, t.responses[2].count)
      assert.equal("\0", assert(cli:get("hx\0new\255")).kvs[1].value)
      -- deletes
      assert.equal(4, assert(cli:delete("hx\255", { prefix = true })).deleted)
      assert.equal(4, assert(cli:delete("hx", { prefix = true })).deleted)
      assert.equal(2, assert(cli:delete("\255\255", { prefix = true })).deleted)
      assert.equal(1, assert(cli:delete("\0")).deleted)
      still_usable()
    end)

    it("a watch sees keys with NUL and 0xff bytes, on a prefix that ends in 0xff", function()
      local w = assert(cli:watch("hw\255", { prefix = true, prev_kv = true }))
      assert(cli:put("hw\255\0", "1\0"))
      assert(cli:put("hw\255\255", "2"))
      assert(cli:put("hx", "outside")) -- after the prefix's end ("hx")
      local seen = {}
      while #seen < 2 do
        local r = assert(w:next(10))
        for _, ev in ipairs(r.events) do seen[#seen + 1] = ev.kv.key .. "=" .. ev.kv.value end
      end
      assert.same({ "hw\255\0=1\0", "hw\255\255=2" }, seen)
      assert_fails("timeout", nil, w:next(0.3))
      w:close()
      assert(cli:delete("hw", { prefix = true }))
      assert(cli:delete("hx"))
      still_usable()
    end)

    it("keys and values over etcd's request limit give too_large; the client stays usable", function()
      local big = ("k"):rep(math.floor(1.6 * MiB))
      -- over etcd's --max-request-bytes (1.5 MiB by default)
      assert_fails("too_large", "^etcdserver: request is too large %(over etcd's", cli:put(big, "v"))
      assert_fails("too_large", "^etcdserver: request is too large %(over etcd's", cli:put("hostile/big", big))
      assert_fails("too_large", nil, cli:txn { success = { etcd.op.put("hostile/big", big) } })
      assert_fails("too_large", nil, cli:batch({ etcd.op.put("hostile/big", big) }, { atomic = true }))
      assert_fails("too_large", nil, cli:user_add(big, "p"))
      -- over the client's max_send_size (2 MiB by default): refused before it is sent
      local huge = ("k"):rep(math.floor(2.1 * MiB))
      assert_fails("too_large", "Sent message larger than max", cli:put(huge, "v"))
      assert_fails("too_large", "Sent message larger than max", cli:get(huge))
      assert_fails("too_large", "Sent message larger than max", cli:delete(huge))
      -- reads are no raft proposals: etcd answers a get of a 1.6 MiB key (gRPC's
      -- own limit there is --max-request-bytes + 512 KiB)
      local res = assert(cli:get(big))
      assert.equal(0, res.count)
      assert.is_nil(assert(cli:get("hostile/big")).kvs[1])
      still_usable()
    end)

    it("a watch over the client's send limit fails at once with too_large; other watches go on", function()
      local w1 = assert(cli:watch("hostile/w1"))
      local t0 = helpers.now()
      assert_fails("too_large", "Sent message larger than max", cli:watch(("k"):rep(math.floor(2.1 * MiB))))
      assert_fails("too_large", "Sent message larger than max",
        cli:watch("a", { range_end = ("z"):rep(math.floor(2.1 * MiB)) }))
      -- exactly at the limit: the WatchRequest for a 1016-byte key is 1024 bytes
      -- (tag, length, create_request { tag, length, key, fragment = true })
      local small = assert(etcd.new { endpoints = srv.endpoints, max_send_size = 1024 })
      local w0 = assert(small:watch(("k"):rep(1016)))
      assert_fails("too_large", "Sent message larger than max %(1025 vs%. 1024%)", small:watch(("k"):rep(1017)))
      -- the refused one broke nothing: the first watch still gets its events
      assert(small:put(("k"):rep(1016), "v"))
      assert.equal("v", assert(w0:next(10)).events[1].kv.value)
      w0:close()
      small:close()
      assert.is_true(helpers.now() - t0 < 5)
      -- one a little under the limit is created (etcd takes up to 2 MiB on a stream)
      local w2 = assert(cli:watch(("k"):rep(math.floor(1.6 * MiB))))
      w2:close()
      assert(cli:put("hostile/w1", "1"))
      local r = assert(w1:next(10))
      assert.equal("hostile/w1", r.events[1].kv.key)
      w1:close()
      still_usable()
    end)
  end)

  -- -------------------------------------------------------------------------
  describe("transactions", function()
    it("more than 128 ops (etcd's --max-txn-ops) in any list gives too_large", function()
      local ops, cmps = {}, {}
      for i = 1, 129 do
        ops[i] = etcd.op.get("hostile/t" .. i)
        cmps[i] = etcd.compare.version("hostile/t" .. i, "=", 0)
      end
      local msg = "^etcdserver: too many operations in txn request %(over"
      assert_fails("too_large", msg, cli:txn { success = ops })
      assert_fails("too_large", msg, cli:txn { failure = ops })
      assert_fails("too_large", msg, cli:txn { compare = cmps })
      assert_fails("too_large", msg, cli:batch(ops, { atomic = true }))
      assert_fails("too_large", msg, cli:txn { success = { etcd.op.txn { success = ops } } }) -- nested too
      assert_fails("too_large", msg, cli:exec(etcd.op.txn { failure = ops }))
      -- 128 is fine
      ops[129] = nil
      assert.equal(128, #assert(cli:txn { success = ops }).responses)
      -- a non-atomic batch sends each op alone
      assert.equal(128, #assert(cli:batch(ops)))
      still_usable()
    end)

    it("txns nest 31 deep at most (the answer must stay within 64 protobuf levels); deeper raises", function()
      assert(cli:put("hostile/deep", "v"))
      local function nest(n, inner)
        local op = inner
        for _ = 1, n do op = etcd.op.txn { success = { op } } end
        return op
      end
      -- 31 levels in all, with keys and prev_kvs in the innermost answer
      local res = assert(cli:exec(nest(31, etcd.op.get("hostile/deep"))))
      for _ = 1, 30 do res = res.responses[1] end
      assert.equal("v", res.responses[1].kvs[1].value)
      res = assert(cli:txn { success = { nest(30, etcd.op.put("hostile/deep", "w", { prev_kv = true })) } })
      for _ = 1, 31 do res = res.responses[1] end
      assert.equal("v", res.prev_kv.value)
      assert.equal("w", assert(cli:get("hostile/deep")).kvs[1].value)
      -- one more level raises, before anything is sent
      local deepest = nest(31, etcd.op.put("hostile/deep", "never"))
      assert_raises("etcd.op.txn", "transactions nested deeper than 31 levels %(success%[1%]%)", etcd.op.txn,
        pack { success = { deepest } })
      assert_raises("txn", "transactions nested deeper than 31 levels %(failure%[1%]%)", etcd.Client.txn,
        pack(cli, { failure = { deepest } }))
      assert_raises("batch", "transactions nested deeper than 31 levels", etcd.Client.batch,
        pack(cli, { deepest }, { atomic = true }))
      -- hundreds deep: building it raises at level 32, whatever the loop does
      local ok, err = pcall(nest, 300, etcd.op.get("k"))
      assert.is_false(ok)
      assert.matches("etcd.op.txn: transactions nested deeper than 31 levels", err)
      assert.equal("w", assert(cli:get("hostile/deep")).kvs[1].value) -- nothing was applied
      still_usable()
    end)

    it("raises for malformed txns, ops and compares, and for forged ones", function()
      local op = etcd.op.get("k")
      local cases = {
        { "txn", { cli, nil }, "bad argument #1 %(table with compare, success, failure expected, got nil%)" },
        { "txn", { cli, setmetatable({}, {}) }, "bad argument #1" },
        { "txn", { cli, { succes = {} } }, "unknown field 'succes'" },
        { "txn", { cli, { [1] = op } }, "unknown field %[1%]" },
        { "txn", { cli, { ["attempt to x"] = op } }, 'unknown field "attempt to x"' },
        { "txn", { cli, { success = op } }, "'success' must be a list" },
        { "txn", { cli, { success = { op, x = op } } }, "'success' must be a list %(found key x%)" },
        { "txn", { cli, { success = { op, nil, op } } }, "success%[2%] must be made by etcd%.op%.%*" },
        { "txn", { cli, { success = { "get k" } } }, "success%[1%] must be made by etcd%.op%.%*" },
        { "txn", { cli, { compare = { op } } }, "compare%[1%] must be made by etcd%.compare%.%*" },
        { "txn", { cli, { success = { setmetatable({ kind = "get" }, getmetatable(op)) } } },
          "success%[1%] must be made by etcd%.op%.%*" },
        { "txn", { cli, { success = { setmetatable({ kind = "rm", req = {} }, getmetatable(op)) } } },
          "success%[1%] must be made by etcd%.op%.%*" },
        { "exec", { cli, setmetatable({ kind = "put" }, getmetatable(op)) }, "bad argument #1 %(etcd%.op expected" },
        { "exec", { cli, etcd.compare.value("k", "=", "v") }, "bad argument #1 %(etcd%.op expected, got table%)" },
        { "batch", { cli, op }, "bad argument #1 %(ops%): list expected" },
        { "batch", { cli, { op, "x" } }, "ops%[2%] must be made by etcd%.op%.%*" },
        { "batch", { cli, { op, [4] = op } }, "bad argument #1 %(ops%): list expected" },
        { "etcd.op.get", { "k", { timeout = 1 } }, "unknown option 'timeout'" },
        { "etcd.op.put", { "k" }, "bad argument #2 %(value%): string expected, got nil" },
        { "etcd.op.put", { "k", nil, { ignore_value = "y" } }, "option 'ignore_value': boolean expected, got string" },
        { "etcd.op.delete", { 1 }, "bad argument #1 %(key%): string expected, got integer" },
        { "etcd.op.get", { "k", { prefix = true, from_key = true } }, "options 'prefix', 'range_end' and 'from_key' exclude" },
        { "etcd.op.txn", { "t" }, "bad argument #1" },
        { "etcd.compare.value", { "k", "=", 1 }, "bad argument #3 %(value%): string expected, got integer" },
        { "etcd.compare.version", { "k", "=", NAN }, "bad argument #3 %(version%): integer expected, got float" },
        { "etcd.compare.mod_revision", { "k", "=", 2 ^ 63 }, "bad argument #3" },
        { "etcd.compare.create_revision", { "k", "=<", 1 }, "bad argument #2 %(operator%): expected one of" },
        { "etcd.compare.lease", { "k", nil, 1 }, "bad argument #2 %(operator%): expected one of .*, got nil" },
        { "etcd.compare.value", { nil, "=", "v" }, "bad argument #1 %(key%): string expected, got nil" },
        { "etcd.compare.value", { "k", "=", "v", { prefix = true, range_end = "z" } },
          "options 'prefix' and 'range_end' exclude each other" },
        { "etcd.compare.value", { "k", "=", "v", { from_key = true } }, "unknown option 'from_key'" },
        { "etcd.prefix_end", { nil }, "bad argument #1 %(key%): string expected, got nil" },
        { "etcd.prefix_end", { 1 }, "bad argument #1 %(key%): string expected, got integer" },
      }
      for _, c in ipairs(cases) do
        local f = c[1]:find("^etcd%.") and etcd or etcd.Client
        for part in c[1]:gmatch("[^.]+") do
          if part ~= "etcd" then f = f[part] end
        end
        local args = c[2]
        args.n = #c[2] < 3 and 3 or #c[2]
        if c[1]:find("^etcd%.compare") or c[1] == "etcd.op.put" then args.n = 4 end
        assert_raises(c[1], c[3], f, args)
      end
      still_usable()
    end)
  end)

  -- -------------------------------------------------------------------------
  describe("watches", function()
    it("a watch on an empty range (key >= range_end) fails as etcd cancels it: CANCELLED", function()
      for _, r in ipairs { { "hostile/b", "hostile/a" }, { "hostile/b", "hostile/b" }, { "\255", "\0\0" } } do
        local w, msg, code = cli:watch(r[1], { range_end = r[2] })
        assert_fails("CANCELLED", "^mvcc: watcher range is empty$", w, msg, code)
      end
      -- the client's other watches are not disturbed
      local w = assert(cli:watch("hostile/we"))
      assert_fails("CANCELLED", nil, cli:watch("z", { range_end = "a" }))
      assert(cli:put("hostile/we", "1"))
      assert.equal("1", assert(w:next(10)).events[1].kv.value)
      w:close()
      -- get and delete of such a range are no error: nothing is in it
      assert.equal(0, assert(cli:get("hostile/b", { range_end = "hostile/a" })).count)
      assert.equal(0, assert(cli:delete("hostile/b", { range_end = "hostile/a" })).deleted)
      still_usable()
    end)

    it("start_revision at the extremes", function()
      -- etcd reads a negative start revision as "from now"
      local w = assert(cli:watch("hostile/ws", { start_revision = -1 }))
      assert(cli:put("hostile/ws", "1"))
      assert.equal("1", assert(w:next(10)).events[1].kv.value)
      w:close()
      -- a future one waits for that revision
      w = assert(cli:watch("hostile/ws", { start_revision = MAXI }))
      assert(cli:put("hostile/ws", "2"))
      assert_fails("timeout", nil, w:next(0.5))
      w:close()
      still_usable()
    end)

    it("filters must be a list of known names", function()
      assert_raises("watch", "option 'filters': list expected %(found key \"x\"%)", etcd.Client.watch,
        pack(cli, "k", { filters = { "noput", x = 1 } }))
      assert_raises("watch", "option 'filters': list expected %(found a hole at 1%)", etcd.Client.watch,
        pack(cli, "k", { filters = { nil, "noput" } }))
      assert_raises("watch", "option 'filters'%[1%]: expected one of \"nodelete\", \"noput\", got \"put\"",
        etcd.Client.watch, pack(cli, "k", { filters = { "put" } }))
      assert_raises("watch", "option 'filters'%[2%]: expected one of .*, got integer", etcd.Client.watch,
        pack(cli, "k", { filters = { "noput", 1 } }))
      assert_raises("watch", "option 'filters': table expected, got string", etcd.Client.watch,
        pack(cli, "k", { filters = "noput" }))
      still_usable()
    end)

    it("w:next, w:events, w:responses, w:close: wrong types and a bad self raise; a closed watch says closed", function()
      local w = assert(cli:watch("hostile/wm"))
      for _, v in ipairs(BAD_SECONDS) do
        assert_raises("w:next", "bad argument #1 %(timeout%): non%-negative number of seconds expected, got " .. v[2],
          w.next, pack(w, v[1]))
      end
      for _, m in ipairs { "next", "events", "responses", "close", "cancel" } do
        for _, self in ipairs { cli, "w", {}, setmetatable({}, getmetatable(w)) } do
          local fname = m == "cancel" and "close" or m
          assert_raises("w:" .. fname, "bad self %(etcd%.watch expected", w[m], pack(self))
        end
      end
      assert_fails("timeout", nil, w:next(0))
      w:close()
      w:close()
      assert_fails("closed", "^etcd: watch is closed$", w:next(0))
      assert_fails("closed", nil, w:next(INF))
      assert.is_nil(w:events()()) -- a loop over a closed watch ends
      still_usable()
    end)
  end)

  -- -------------------------------------------------------------------------
  describe("keep-alives", function()
    it("ka:next, ka:responses, ka:close: wrong types and a bad self raise", function()
      local g = assert(cli:grant(60))
      local ka = assert(cli:keepalive(g.id))
      assert.equal(g.id, assert(ka:next(10)).id)
      for _, v in ipairs(BAD_SECONDS) do
        assert_raises("ka:next", "bad argument #1 %(timeout%): non%-negative number of seconds expected, got " .. v[2],
          ka.next, pack(ka, v[1]))
      end
      for _, m in ipairs { "next", "responses", "close" } do
        for _, self in ipairs { cli, 1, {}, setmetatable({}, getmetatable(ka)) } do
          assert_raises("ka:" .. m, "bad self %(etcd%.keepalive expected", ka[m], pack(self))
        end
      end
      ka:close()
      ka:close()
      assert_fails("closed", nil, ka:next(0))
      assert_fails("closed", nil, ka:next(INF))
      assert(cli:revoke(g.id))
      still_usable()
    end)
  end)

  -- -------------------------------------------------------------------------
  describe("etcd.new", function()
    local function new_raises(what, opts)
      assert_raises("etcd.new", what, etcd.new, pack(opts))
    end

    it("raises for options of the wrong type, bad endpoints and bad TLS options, before connecting", function()
      for _, v in ipairs(values_but("table")) do
        new_raises("bad argument #1 %(options table expected, got " .. type(v[1]) .. "%)", v[1])
      end
      local ep = srv.endpoint
      new_raises("unknown option 'endpoint'", { endpoint = { ep } })
      new_raises("option names must be strings, got integer", { ep })
      new_raises("option 'endpoints' must list at least one endpoint", {})
      new_raises("option 'endpoints' must list at least one endpoint", { endpoints = {} })
      new_raises("option 'endpoints': table expected, got string", { endpoints = ep })
      new_raises("option 'endpoints': list expected %(found key \"x\"%)", { endpoints = { ep, x = ep } })
      new_raises("option 'endpoints': list expected %(found a hole at 2%)", { endpoints = { ep, nil, ep } })
      new_raises("option 'endpoints': list expected, got table", { endpoints = setmetatable({ ep }, {}) })
      local many = {}
      for i = 1, 65 do many[i] = ep end
      new_raises("option 'endpoints' lists more than 64 endpoints", { endpoints = many })
      for _, bad in ipairs { "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:99999999999999999999",
                             "a\0b:1", "127.0.0.1:1\0", "a b:1", "[::1]", ":1", "http://", "" } do
        local nul = bad:find("\0", 1, true) and " without NUL bytes" or ""
        new_raises('endpoints%[1%]: "host:port"' .. nul .. ' expected, got ' .. esc(("%q"):format(bad)),
          { endpoints = { bad } })
      end
      new_raises('endpoints%[1%]: unsupported scheme in "unix:///tmp/x"', { endpoints = { "unix:///tmp/x" } })
      new_raises("endpoints%[2%]: string expected, got number", { endpoints = { ep, 2379 } })
      for _, opt in ipairs { "dial_timeout", "timeout" } do
        for _, v in ipairs(BAD_SECONDS) do
          new_raises(("option '%s': non%%-negative number of seconds expected, got %s"):format(opt, v[2]),
            { endpoints = { ep }, [opt] = v[1] })
        end
      end
      for _, opt in ipairs { "max_send_size", "max_recv_size" } do
        for _, v in ipairs { -1, 2 ^ 31, MAXI, MINI, 1.5, NAN, INF, "100" } do
          new_raises(("option '%s': size in bytes %%(0 to 2%%^31%%-1%%) expected"):format(opt),
            { endpoints = { ep }, [opt] = v })
        end
        -- 0 is the default
        local c = assert(etcd.new { endpoints = { ep }, [opt] = 0 })
        assert(c:put("hostile/size", ("s"):rep(MiB)))
        c:close()
      end
      new_raises("option 'namespace': string expected, got integer", { endpoints = { ep }, namespace = 1 })
      new_raises("options 'user' and 'password' go together", { endpoints = { ep }, user = "u" })
      new_raises("options 'user' and 'password' go together", { endpoints = { ep }, password = "p" })
      new_raises("option 'user': string without NUL bytes expected", { endpoints = { ep }, user = "u\0", password = "p" })
      new_raises("option 'password': string without NUL bytes expected", { endpoints = { ep }, user = "u", password = "\0" })
      new_raises("option 'tls': table expected, got string", { endpoints = { ep }, tls = "yes" })
      new_raises("option 'tls': unknown option 'cafile'", { endpoints = { ep }, tls = { cafile = "x" } })
      new_raises("option 'tls': option 'ca': string expected, got integer", { endpoints = { ep }, tls = { ca = 1 } })
      new_raises("option 'tls': option 'server_name': string without NUL bytes expected",
        { endpoints = { ep }, tls = { server_name = "a\0b" } })
      new_raises("option 'tls': option 'ca': string without NUL bytes expected",
        { endpoints = { ep }, tls = { ca = "/etc/passwd\0.pem" } })
      new_raises("options 'tls.cert' and 'tls.key' go together", { endpoints = { ep }, tls = { cert = "c" } })
      new_raises("option 'tls.ca': cannot read \"/nonexistent/ca%.pem\": No such file or directory",
        { endpoints = { ep }, tls = { ca = "/nonexistent/ca.pem" } })
      new_raises("option 'tls.ca': \"/\" holds no PEM data", { endpoints = { ep }, tls = { ca = "/" } })
      new_raises("http:// endpoints cannot be used with TLS", { endpoints = { "http://" .. ep }, tls = {} })
      new_raises("option 'auto_sync_interval': non%-negative number of seconds expected, got %-1",
        { endpoints = { ep }, auto_sync_interval = -1 })
      still_usable()
    end)

    it("a login with auth off goes on without a token; an unreachable endpoint gives UNAVAILABLE", function()
      -- auth is off: etcd answers that it is not enabled, and the client goes on without a token
      local c = assert(etcd.new { endpoints = srv.endpoints, user = "\255", password = ("p"):rep(100) })
      assert(c:put("hostile/login", "1"))
      c:close()
      -- an unreachable endpoint within a short dial timeout
      local _, msg, code = etcd.new { endpoints = { "127.0.0.1:1" }, dial_timeout = 0.2 }
      assert_fails("UNAVAILABLE", "no endpoint reachable within 0%.2s", nil, msg, code)
      still_usable()
    end)
  end)

  -- -------------------------------------------------------------------------
  -- What fuzz/fuzz_options.c found (the inputs are in fuzz/regress/options/),
  -- as plain Lua calls.
  describe("fuzzer regressions", function()
    it("etcd.prefix_end of a non-string raises (was: attempt to get length of a nil value)", function()
      for _, v in ipairs(values_but("string")) do
        assert_raises("etcd.prefix_end", "bad argument #1 %(key%): string expected, got " .. v[2], etcd.prefix_end,
          pack(v[1]))
      end
      assert.equal("b", etcd.prefix_end("a\255"))
    end)

    it("auth names and passwords with a NUL byte raise (was: etcd.core: ... string contains a NUL byte)", function()
      for _, c in ipairs {
        { "role_add", { "r\0" } }, { "role_get", { "\0" } }, { "role_delete", { "r\0x" } },
        { "user_get", { "u\0" } }, { "user_add", { "u", "p\0" } }, { "user_grant_role", { "u", "\0" } },
        { "role_grant_permission", { "\0", "k", nil, "read" } }, { "role_revoke_permission", { "r\0", "k" } },
      } do
        local args = { n = #c[2] + 1, cli }
        for i = 1, 4 do args[i + 1] = c[2][i] end
        args.n = 5
        assert_raises(c[1], "bad argument #%d %(.-%): string without NUL bytes expected", etcd.Client[c[1]], args)
      end
      still_usable()
    end)

    it("member_add with a list with a hole raises (was: etcd.core: field 'peerURLs' ...: hole at index 1)", function()
      assert_raises("member_add", "bad argument #1 %(peer_urls%): list expected %(found a hole at 1%)",
        etcd.Client.member_add, pack(cli, { nil, "http://127.0.0.1:1" }))
      assert_raises("member_add", "bad argument #1 %(peer_urls%): list expected %(found key \"x\"%)",
        etcd.Client.member_add, pack(cli, { "http://127.0.0.1:1", x = 1 }))
      assert_raises("member_update", "bad argument #2 %(peer_urls%[1%]%): string without NUL bytes expected",
        etcd.Client.member_update, pack(cli, 1, { "http://a\0:1" }))
      assert_raises("member_add", "bad argument #1 %(peer_urls%): list of URLs expected", etcd.Client.member_add,
        pack(cli, {}))
      still_usable()
    end)

    it("exec of a table with the metatable of etcd.op raises (was: bad argument #1 to '_unary')", function()
      local mt = getmetatable(etcd.op.get("k"))
      assert_raises("exec", "bad argument #1 %(etcd%.op expected, got table%)", etcd.Client.exec,
        pack(cli, setmetatable({}, mt)))
      assert_raises("batch", "ops%[1%] must be made by etcd%.op%.%*", etcd.Client.batch,
        pack(cli, { setmetatable({ kind = "txn" }, mt) }))
      still_usable()
    end)

    it("numeric strings are no integers: limit = '5', max_send_size = '100' raise", function()
      assert_raises("get", "option 'limit': non%-negative integer expected, got string", etcd.Client.get,
        pack(cli, "k", { limit = "5" }))
      assert_raises("etcd.new", "option 'max_send_size': size in bytes %(0 to 2%^31%-1%) expected, got string",
        etcd.new, pack { endpoints = srv.endpoints, max_send_size = "100" })
      still_usable()
    end)

    it("a missing TLS file is reported at the caller's line (was: one level too high)", function()
      assert_raises("etcd.new", "option 'tls.cert': cannot read", etcd.new,
        pack { endpoints = srv.endpoints, tls = { cert = "/nonexistent/c.pem", key = "/nonexistent/k.pem" } })
    end)
  end)
end)

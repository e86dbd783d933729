--- The Lua side of examples/openresty/nginx.conf: one worker (elected through
-- the dict) mirrors the keys under config/ into the shared dict `config`;
-- request handlers read it, and write to etcd or wait for a change through
-- their worker's own client.
local etcd = require "etcd"

local M = { prefix = "config/" }

local cli -- this worker's client: made in the worker, on first use

--- This worker's client.
function M.client()
  if not cli then
    local eps = {}
    for ep in (os.getenv("ETCD_ENDPOINTS") or "127.0.0.1:2379"):gmatch("[^,%s]+") do eps[#eps + 1] = ep end
    cli = assert(etcd.new { endpoints = eps, timeout = 5 })
  end
  return cli
end

--- In every worker (init_worker_by_lua*): the workers elect one of them to
-- mirror config/ into the shared dict (a lock in the dict); if it dies or is
-- reloaded, another takes over from the revision the dict reflects.
function M.init_worker()
  M.mirror = require("etcd.ngx").shared_mirror(ngx.shared.config, M.prefix, { client = M.client })
end

function M.get()
  local value = ngx.shared.config:get(M.prefix .. ngx.var.uri:sub(#"/config/" + 1))
  if value == nil then return ngx.exit(404) end
  ngx.say(value)
end

function M.put()
  local args = ngx.req.get_uri_args()
  local res, msg = M.client():put(M.prefix .. args.key, args.value or "")
  if not res then
    ngx.status = 502
    return ngx.say(msg)
  end
  ngx.say(res.header.revision)
end

function M.wait()
  local key = M.prefix .. ngx.req.get_uri_args().key
  local w, msg = M.client():watch(key)
  if w then
    ngx.shared.config:incr("$waiting", 1, 0)
    local res
    res, msg = w:next(30)
    ngx.shared.config:incr("$waiting", -1)
    w:close()
    local ev = res and res.events[1]
    if ev then return ngx.say(ev.kv and ev.kv.value or "") end
  end
  ngx.status = 504
  ngx.say(msg or "no change")
end

function M.status()
  local st = M.mirror:stats()
  ngx.say("revision ", st.revision, ", holder ", st.holder or "none", ", loads ", st.loads, ", takeovers ",
    st.takeovers, ", waiting ", ngx.shared.config:get("$waiting") or 0)
end

return M

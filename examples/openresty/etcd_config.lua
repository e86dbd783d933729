--- The Lua side of examples/openresty/nginx.conf: worker 0 mirrors the keys
-- under config/ into the shared dict `config`; request handlers read it, and
-- write to etcd or wait for a change through their worker's own client.
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

-- The mirror's loop, in a timer (where waits yield to nginx): load the
-- prefix, copy it into the dict, then apply changes until nginx stops this
-- worker (nginx -s reload, quit), and start over after a failure.
local function mirror(premature)
  if premature then return end
  local dict = ngx.shared.config
  while not ngx.worker.exiting() do
    local m, msg = etcd.mirror(M.client(), M.prefix, {
      on_change = function(kind, key, kv)
        if kind == "put" then dict:set(key, kv.value) else dict:delete(key) end
      end,
    })
    if m then
      local keep = {}
      for key, value in m:pairs() do
        dict:set(key, value)
        keep[key] = true
      end
      for _, key in ipairs(dict:get_keys(0)) do
        if not keep[key] and key:sub(1, 1) ~= "$" then dict:delete(key) end
      end
      dict:set("$revision", m:revision())
      while not ngx.worker.exiting() do
        local ok, err = m:poll(1)
        if not ok then msg = err break end
        dict:set("$revision", m:revision())
      end
      m:close()
    end
    if msg then
      ngx.log(ngx.ERR, "etcd mirror: ", msg)
      ngx.sleep(1)
    end
  end
  cli:close()
  cli = nil
end

function M.init_worker()
  if ngx.worker.id() == 0 then assert(ngx.timer.at(0, mirror)) end
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
  local dict = ngx.shared.config
  ngx.say("revision ", dict:get("$revision") or 0, ", waiting ", dict:get("$waiting") or 0)
end

return M

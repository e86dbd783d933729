--- The cqueues driver (README "Using with cqueues"). Nothing to call: inside
-- a coroutine that a cqueues controller runs (cq:wrap(fn)), every etcd wait
-- yields to cqueues instead of blocking the thread (etcd.wait picks this
-- driver by asking cqueues.running()).
--
-- Per client, one pump coroutine in the controller polls the client's
-- eventfd while some coroutine waits on that client, reaps its ready list
-- and signals exactly the waiters of the tokens that came up, through a
-- cqueues condition each. It ends when nobody waits any more, so cq:loop()
-- returns when the user's coroutines have.
local cqueues = require "cqueues"
local compat = require "etcd.compat"
local pcall = compat.pcall -- (5.1: one a coroutine can yield through)
local condition = require "cqueues.condition"
local wait = require "etcd.wait"

local M = { name = "cqueues" }

local now = wait.now
local polled = {} -- etcd.core client -> waiters parked on its tokens
local pumps = {}  -- etcd.core client -> the condition that stops its pump

local function pump(cc, stop)
  local fd = { pollfd = function() return cc:pollfd() end, events = function() return "r" end }
  while (polled[cc] or 0) > 0 and not cc:_closed() do
    cqueues.poll(fd, stop)
    wait.dispatch(cc)
  end
  wait.dispatch(cc)
  pumps[cc] = nil
end

local function wake(rec, why)
  rec.why = why or "ready"
  rec.cond:signal()
end

function M.park(rec, cc, dl)
  rec.cond = condition.new()
  rec.wake = wake
  if cc then
    polled[cc] = (polled[cc] or 0) + 1
    if not pumps[cc] then
      local stop = condition.new()
      pumps[cc] = stop
      cqueues.running():wrap(pump, cc, stop)
    end
  end
  local ok, err = pcall(function()
    while not rec.why do
      local left = dl and dl - now()
      if left and left <= 0 then break end
      cqueues.poll(rec.cond, left)
    end
  end)
  if cc then
    local n = polled[cc] - 1
    polled[cc] = n > 0 and n or nil
    if n == 0 and pumps[cc] then pumps[cc]:signal() end
  end
  if not ok then error(err, 0) end
  return rec.why or "timeout"
end

return M

-- What the benchmark drivers and their per-round scripts share (required as
-- "bench.common": every bench script runs from the repository root).
local M = {}

--- Run a shell command: ok, its stdout and stderr together.
function M.sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a")
  local ok = p:close()
  return ok, out
end

--- Run one round (a process printing a `RESULT k=v ...` line) and return
-- its fields, numbers as numbers; raises with its output when it failed.
function M.result(cmd)
  local ok, out = M.sh(cmd)
  local line = out:match("RESULT[^\n]*")
  if not ok or not line then error("bench: " .. cmd .. " failed:\n" .. out, 0) end
  local r = {}
  for k, v in line:gmatch("(%S+)=(%S+)") do r[k] = tonumber(v) or v end
  return r
end

--- The median of a list of numbers (nil for none), or of field `f` of a
-- list of results.
function M.median(list, f)
  local v = {}
  for i, x in ipairs(list) do
    if f then v[i] = x[f] else v[i] = x end
  end
  if #v == 0 then return nil end
  table.sort(v)
  return v[#v // 2 + 1]
end

--- This process's resident memory, KiB.
function M.rss_kb()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

return M

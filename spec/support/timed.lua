-- busted's plainTerminal output, then the seconds each spec file took,
-- slowest first (just before busted's summary line): what CI's time budget
-- goes to, in every step's log. `.busted` makes it the default output.
return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.plainTerminal")(options)
  local files = {}
  local subscribe = handler.subscribe
  handler.subscribe = function(self, opts)
    subscribe(self, opts)
    busted.subscribe({ "file", "end" }, function(file)
      files[#files + 1] = { file.name, file.duration or 0 }
      return nil, true
    end)
    busted.subscribe({ "suite", "end" }, function()
      table.sort(files, function(a, b) return a[2] > b[2] end)
      io.write("\nseconds per spec file:\n")
      for _, f in ipairs(files) do io.write(("%8.1f  %s\n"):format(f[2], f[1])) end
      io.flush()
      return nil, true
    end, { priority = 1 })
  end
  return handler
end

-- check-proto.lua: prove that lua-etcd's own .proto files describe the same
-- wire protocol as etcd's.
--
--   lua5.4 tools/check-proto.lua UPSTREAM_DIR OURS_DIR
--
-- UPSTREAM_DIR holds etcd's rpc.proto, kv.proto and auth.proto side by side
-- (see tools/fetch-etcd-proto.sh); OURS_DIR is proto/, holding
-- etcdserverpb/rpc.proto, mvccpb/kv.proto and authpb/auth.proto.
--
-- Both file sets are parsed by the small proto3 parser below into tables of
-- fully qualified definitions (messages with their fields, enums with their
-- values, services with their methods). Every definition of ours must exist in
-- etcd's, identical: field names, numbers, types, labels, oneofs; enum value
-- names and numbers; method names, request/response types and streaming. And
-- everything etcd defines in these three files must be in ours too.
--
-- Exit status: 0 when they match, 1 with one line per difference otherwise,
-- 2 when a file can't be read or parsed (unknown syntax fails loudly, it is
-- never skipped) or etcd's files yield implausibly few definitions.
-- Pure Lua 5.4, no modules.

local UPSTREAM_FILES = { "rpc.proto", "kv.proto", "auth.proto" }
local OUR_FILES = { "etcdserverpb/rpc.proto", "mvccpb/kv.proto", "authpb/auth.proto" }

-- Least amounts expected in etcd's files (3.4.x has 91 messages, 7 enums,
-- 6 services and 39 methods in rpc.proto; 2 messages and 1 enum in kv.proto;
-- 4 messages and 1 enum in auth.proto). Guards against an empty parse passing.
local PLAUSIBLE = {
  ["rpc.proto"] = { messages = 80, enums = 5, services = 6, methods = 35 },
  ["kv.proto"] = { messages = 2, enums = 1, services = 0, methods = 0 },
  ["auth.proto"] = { messages = 4, enums = 1, services = 0, methods = 0 },
}

local SCALARS = {}
for t in ([[double float int32 int64 uint32 uint64 sint32 sint64
            fixed32 fixed64 sfixed32 sfixed64 bool string bytes]]):gmatch("%S+") do
  SCALARS[t] = true
end

-- Errors meant for the user are raised as tables {msg=...}; anything else is a
-- bug in this script and keeps its traceback.
local function fail(fmt, ...)
  error({ msg = string.format(fmt, ...) }, 0)
end

---------------------------------------------------------------------------
-- Tokenizer
---------------------------------------------------------------------------

-- Token kinds: "ident" (letters, digits, _; dots are separate "punct"),
-- "int", "float", "string", "punct", "eof". Each token has .line.
local function tokenize(src, fname)
  local toks = {}
  local i, line, n = 1, 1, #src
  local function push(kind, value)
    toks[#toks + 1] = { kind = kind, value = value, line = line }
  end
  while i <= n do
    local c = src:sub(i, i)
    if c == "\n" then
      line = line + 1
      i = i + 1
    elseif c:match("%s") then
      i = i + 1
    elseif src:sub(i, i + 1) == "//" then
      local j = src:find("\n", i, true)
      i = j or n + 1
    elseif src:sub(i, i + 1) == "/*" then
      local j = src:find("*/", i + 2, true)
      if not j then fail("%s:%d: unterminated /* comment", fname, line) end
      local _, nl = src:sub(i, j + 1):gsub("\n", "")
      line = line + nl
      i = j + 2
    elseif c:match("[%a_]") then
      local s, e = src:find("^[%w_]+", i)
      push("ident", src:sub(s, e))
      i = e + 1
    elseif c:match("%d") or (c == "." and src:sub(i + 1, i + 1):match("%d")) then
      local s, e = src:find("^0[xX]%x+", i)
      if s then
        push("int", math.tointeger(tonumber(src:sub(s, e))))
      else
        s, e = src:find("^%d*%.?%d*[eE][+-]?%d+", i)
        if not s then s, e = src:find("^%d*%.%d*", i) end
        if s and src:sub(s, e):find("[.eE]") then
          push("float", tonumber(src:sub(s, e)))
        else
          s, e = src:find("^%d+", i)
          local text = src:sub(s, e)
          local v
          if #text > 1 and text:sub(1, 1) == "0" then
            if text:find("[89]") then fail("%s:%d: bad octal number %s", fname, line, text) end
            v = tonumber(text, 8)
          else
            v = math.tointeger(tonumber(text))
          end
          if not v then fail("%s:%d: bad number %s", fname, line, text) end
          push("int", v)
        end
      end
      i = e + 1
      if src:sub(i, i):match("[%w_]") then
        fail("%s:%d: bad number near %q", fname, line, src:sub(i - 1, i + 5))
      end
    elseif c == '"' or c == "'" then
      local j = i + 1
      local buf = {}
      while true do
        local d = src:sub(j, j)
        if d == "" or d == "\n" then fail("%s:%d: unterminated string", fname, line) end
        if d == c then break end
        if d == "\\" then
          buf[#buf + 1] = src:sub(j, j + 1)
          j = j + 2
        else
          buf[#buf + 1] = d
          j = j + 1
        end
      end
      push("string", table.concat(buf))
      i = j + 1
    elseif c:match("[{}%[%]()<>;,=.:%-+/]") then
      push("punct", c)
      i = i + 1
    else
      fail("%s:%d: unexpected character %q", fname, line, c)
    end
  end
  push("eof", "<end of file>")
  return toks
end

---------------------------------------------------------------------------
-- Parser
---------------------------------------------------------------------------

-- parse_file(src, fname, defs) adds the file's definitions to defs:
--   defs.byname[fqname] = def, defs.order = { fqname, ... } in declaration order
--   message: { kind="message", name, fields = { {name, number, type, label,
--              oneof, scope, line}, ... } }
--   enum:    { kind="enum", name, values = { {name, number}, ... } }
--   service: { kind="service", name, methods = { {name, req, resp,
--              client_stream, server_stream, scope, line}, ... } }
-- Field and method type names are left as written (with their scope) and are
-- resolved once all files of the set are parsed. Returns per-file counts.
local function parse_file(src, fname, defs)
  local toks = tokenize(src, fname)
  local pos = 1
  local counts = { messages = 0, enums = 0, services = 0, methods = 0 }

  local function peek(k) return toks[pos + (k or 0)] end
  local function where(t) return string.format("%s:%d", fname, (t or toks[pos]).line) end
  local function describe(t)
    if t.kind == "string" then return string.format("string %q", t.value) end
    return string.format("%q", tostring(t.value))
  end
  local function next_tok()
    local t = toks[pos]
    if t.kind ~= "eof" then pos = pos + 1 end
    return t
  end
  local function is(value) -- current token is the punctuation `value`
    local t = toks[pos]
    return t.kind == "punct" and t.value == value
  end
  local function is_kw(word)
    local t = toks[pos]
    return t.kind == "ident" and t.value == word
  end
  local function expect(value)
    local t = next_tok()
    if t.kind ~= "punct" or t.value ~= value then
      fail("%s: expected %q, got %s", where(t), value, describe(t))
    end
    return t
  end
  local function expect_kw(word)
    local t = next_tok()
    if t.kind ~= "ident" or t.value ~= word then
      fail("%s: expected %q, got %s", where(t), word, describe(t))
    end
    return t
  end
  local function ident()
    local t = next_tok()
    if t.kind ~= "ident" then fail("%s: expected a name, got %s", where(t), describe(t)) end
    return t.value
  end
  -- A possibly dotted name: [.]ident{.ident}
  local function full_ident()
    local s = ""
    if is(".") then next_tok(); s = "." end
    s = s .. ident()
    while is(".") do
      next_tok()
      s = s .. "." .. ident()
    end
    return s
  end
  local function int_value()
    local neg = false
    if is("-") then next_tok(); neg = true end
    local t = next_tok()
    if t.kind ~= "int" then fail("%s: expected an integer, got %s", where(t), describe(t)) end
    return neg and -t.value or t.value
  end

  -- Skips a balanced group starting at the current opening token.
  local closers = { ["{"] = "}", ["["] = "]", ["("] = ")", ["<"] = ">" }
  local function skip_balanced()
    local open = next_tok()
    local stack = { closers[open.value] }
    while #stack > 0 do
      local t = next_tok()
      if t.kind == "eof" then
        fail("%s: unclosed %q opened at line %d", fname, open.value, open.line)
      elseif t.kind == "punct" and closers[t.value] and t.value ~= "<" then
        stack[#stack + 1] = closers[t.value]
      elseif t.kind == "punct" and (t.value == "}" or t.value == "]" or t.value == ")") then
        if t.value ~= stack[#stack] then
          fail("%s: unexpected %q (expected %q)", where(t), t.value, stack[#stack])
        end
        stack[#stack] = nil
      end
    end
  end

  -- option NAME = VALUE ;  where NAME is ident or (full.ident) with .ident
  -- suffixes and VALUE a constant or an aggregate { ... } (nested braces).
  local function skip_option_statement()
    expect_kw("option")
    if is("(") then
      next_tok(); full_ident(); expect(")")
    else
      ident()
    end
    while is(".") do next_tok(); ident() end
    expect("=")
    if is("{") then
      skip_balanced()
    else
      local t = next_tok()
      if t.kind == "punct" and (t.value == "-" or t.value == "+") then t = next_tok() end
      if not (t.kind == "ident" or t.kind == "int" or t.kind == "float" or t.kind == "string") then
        fail("%s: bad option value %s", where(t), describe(t))
      end
      while peek().kind == "string" do next_tok() end -- adjacent string literals
    end
    expect(";")
  end

  -- [ name = value, ... ] after a field or enum value: skipped, must be balanced.
  local function skip_field_options()
    if is("[") then skip_balanced() end
  end

  local function add_def(def, t)
    if defs.byname[def.name] then
      fail("%s: %s is defined twice", where(t), def.name)
    end
    defs.byname[def.name] = def
    defs.order[#defs.order + 1] = def.name
  end

  local package = nil
  local function qualify(scope, name)
    if scope == "" then return name end
    return scope .. "." .. name
  end

  local parse_message, parse_enum

  function parse_enum(scope)
    local t = expect_kw("enum")
    local name = qualify(scope, ident())
    local def = { kind = "enum", name = name, values = {}, file = fname, line = t.line }
    add_def(def, t)
    counts.enums = counts.enums + 1
    expect("{")
    while not is("}") do
      if is(";") then
        next_tok()
      elseif is_kw("option") then
        skip_option_statement()
      elseif is_kw("reserved") then
        next_tok()
        while not is(";") do
          if peek().kind == "eof" then fail("%s: unterminated reserved", where()) end
          next_tok()
        end
        next_tok()
      elseif peek().kind == "ident" then
        local vt = peek()
        local vname = ident()
        expect("=")
        local number = int_value()
        skip_field_options()
        expect(";")
        for _, v in ipairs(def.values) do
          if v.name == vname then fail("%s: enum value %s.%s defined twice", where(vt), name, vname) end
        end
        def.values[#def.values + 1] = { name = vname, number = number, line = vt.line }
      else
        fail("%s: unexpected %s in enum %s", where(), describe(peek()), name)
      end
    end
    expect("}")
    return def
  end

  -- One field: [repeated|optional] type name = N [opts] ;   or map<K,V> name = N;
  local function parse_field(def, scope, oneof)
    local t = peek()
    local label = "singular"
    if is_kw("repeated") or is_kw("optional") then
      if oneof then fail("%s: %s not allowed inside oneof %s", where(), peek().value, oneof) end
      label = ident()
    elseif is_kw("required") or is_kw("group") or is_kw("extensions") or is_kw("extend") then
      fail("%s: %q is not proto3 (unsupported)", where(), peek().value)
    end
    local ftype, keytype
    if is_kw("map") and peek(1).kind == "punct" and peek(1).value == "<" then
      if label ~= "singular" or oneof then
        fail("%s: map field can't be %s", where(), oneof and "in a oneof" or label)
      end
      next_tok(); expect("<")
      keytype = ident()
      if not SCALARS[keytype] or keytype == "bytes" or keytype == "double" or keytype == "float" then
        fail("%s: bad map key type %s", where(), keytype)
      end
      expect(",")
      ftype = full_ident()
      expect(">")
      label = "map"
    else
      ftype = full_ident()
    end
    local nt = peek()
    local fname_ = ident()
    expect("=")
    local number = int_value()
    if number < 1 or number > 536870911 or (number >= 19000 and number <= 19999) then
      fail("%s: bad field number %d for %s", where(nt), number, fname_)
    end
    skip_field_options()
    expect(";")
    for _, f in ipairs(def.fields) do
      if f.name == fname_ then fail("%s: field %s.%s defined twice", where(nt), def.name, fname_) end
      if f.number == number then
        fail("%s: field number %d used twice in %s (%s, %s)", where(nt), number, def.name, f.name, fname_)
      end
    end
    def.fields[#def.fields + 1] = {
      name = fname_, number = number, type = ftype, keytype = keytype,
      label = label, oneof = oneof, scope = scope, line = t.line,
    }
  end

  function parse_message(scope)
    local t = expect_kw("message")
    local name = qualify(scope, ident())
    local def = { kind = "message", name = name, fields = {}, file = fname, line = t.line }
    add_def(def, t)
    counts.messages = counts.messages + 1
    expect("{")
    while not is("}") do
      if is(";") then
        next_tok()
      elseif is_kw("option") then
        skip_option_statement()
      elseif is_kw("message") and peek(1).kind == "ident" then
        parse_message(name)
      elseif is_kw("enum") and peek(1).kind == "ident" then
        parse_enum(name)
      elseif is_kw("reserved") then
        next_tok()
        while not is(";") do
          if peek().kind == "eof" then fail("%s: unterminated reserved", where()) end
          next_tok()
        end
        next_tok()
      elseif is_kw("oneof") and peek(1).kind == "ident" and peek(2).kind == "punct" and peek(2).value == "{" then
        next_tok()
        local oname = ident()
        expect("{")
        local before = #def.fields
        while not is("}") do
          if is(";") then
            next_tok()
          elseif is_kw("option") then
            skip_option_statement()
          elseif peek().kind == "ident" or is(".") then
            parse_field(def, name, oname)
          else
            fail("%s: unexpected %s in oneof %s.%s", where(), describe(peek()), name, oname)
          end
        end
        expect("}")
        if #def.fields == before then fail("%s: empty oneof %s.%s", where(), name, oname) end
      elseif peek().kind == "ident" or is(".") then
        parse_field(def, name, nil)
      else
        fail("%s: unexpected %s in message %s", where(), describe(peek()), name)
      end
    end
    expect("}")
    return def
  end

  local function parse_service(scope)
    local t = expect_kw("service")
    local name = qualify(scope, ident())
    local def = { kind = "service", name = name, methods = {}, file = fname, line = t.line }
    add_def(def, t)
    counts.services = counts.services + 1
    expect("{")
    while not is("}") do
      if is(";") then
        next_tok()
      elseif is_kw("option") then
        skip_option_statement()
      elseif is_kw("rpc") then
        local rt = next_tok()
        local mname = ident()
        local m = { name = mname, scope = scope, line = rt.line }
        expect("(")
        if is_kw("stream") and (peek(1).kind == "ident" or (peek(1).kind == "punct" and peek(1).value == ".")) then
          next_tok(); m.client_stream = true
        else
          m.client_stream = false
        end
        m.req = full_ident()
        expect(")")
        expect_kw("returns")
        expect("(")
        if is_kw("stream") and (peek(1).kind == "ident" or (peek(1).kind == "punct" and peek(1).value == ".")) then
          next_tok(); m.server_stream = true
        else
          m.server_stream = false
        end
        m.resp = full_ident()
        expect(")")
        if is("{") then
          next_tok()
          while not is("}") do
            if is(";") then
              next_tok()
            elseif is_kw("option") then
              skip_option_statement()
            else
              fail("%s: unexpected %s in rpc %s.%s", where(), describe(peek()), name, mname)
            end
          end
          expect("}")
        else
          expect(";")
        end
        for _, other in ipairs(def.methods) do
          if other.name == mname then fail("%s: rpc %s.%s defined twice", where(rt), name, mname) end
        end
        def.methods[#def.methods + 1] = m
        counts.methods = counts.methods + 1
      else
        fail("%s: unexpected %s in service %s", where(), describe(peek()), name)
      end
    end
    expect("}")
  end

  -- File level.
  local seen_syntax = false
  while peek().kind ~= "eof" do
    if is(";") then
      next_tok()
    elseif is_kw("syntax") then
      local st = next_tok()
      expect("=")
      local v = next_tok()
      if v.kind ~= "string" or v.value ~= "proto3" then
        fail("%s: only syntax = \"proto3\" is supported, got %s", where(v), describe(v))
      end
      expect(";")
      if st ~= toks[1] then fail("%s: syntax must be the first statement", where(st)) end
      seen_syntax = true
    elseif is_kw("package") then
      local pt = next_tok()
      if package then fail("%s: second package statement", where(pt)) end
      package = full_ident()
      if package:sub(1, 1) == "." then fail("%s: bad package name %s", where(pt), package) end
      expect(";")
    elseif is_kw("import") then
      next_tok()
      if is_kw("public") or is_kw("weak") then next_tok() end
      local s = next_tok()
      if s.kind ~= "string" then fail("%s: expected import file name, got %s", where(s), describe(s)) end
      expect(";")
    elseif is_kw("option") then
      skip_option_statement()
    elseif is_kw("message") or is_kw("enum") or is_kw("service") then
      if not package then fail("%s: definition before the package statement", where()) end
      if is_kw("message") then
        parse_message(package)
      elseif is_kw("enum") then
        parse_enum(package)
      else
        parse_service(package)
      end
    else
      fail("%s: unexpected %s at file level", where(), describe(peek()))
    end
  end
  if not seen_syntax then fail("%s: no syntax = \"proto3\" statement", fname) end
  if not package then fail("%s: no package statement", fname) end
  defs.packages[package] = true
  return counts
end

---------------------------------------------------------------------------
-- Name resolution
---------------------------------------------------------------------------

-- protobuf's rule: a name "A.B.C" used in scope "p.M.N" binds its first
-- component A in the innermost of p.M.N, p.M, p, <root> where A exists (as a
-- type or a package); the whole name must then exist below that scope. A
-- leading dot means fully qualified.
local function resolve_all(defs)
  local known = {} -- every type name and every package name prefix
  for name, def in pairs(defs.byname) do
    if def.kind ~= "service" then known[name] = def.kind end
  end
  for pkg in pairs(defs.packages) do
    local p = ""
    for part in pkg:gmatch("[^.]+") do
      p = (p == "" and part) or (p .. "." .. part)
      known[p] = known[p] or "package"
    end
  end

  local function resolve(name, scope, want, where_)
    local full
    if name:sub(1, 1) == "." then
      full = name:sub(2)
    else
      local first = name:match("^[^.]+")
      local s = scope
      while true do
        local cand = (s == "" and first) or (s .. "." .. first)
        if known[cand] then
          full = (s == "" and name) or (s .. "." .. name)
          break
        end
        if s == "" then break end
        s = s:match("^(.*)%.[^.]+$") or ""
      end
      if not full then fail("%s: unknown type %s", where_, name) end
    end
    local kind = known[full]
    if kind ~= "message" and kind ~= "enum" then
      fail("%s: %s (as %s) is not a message or enum", where_, name, full)
    end
    if want and kind ~= want then
      fail("%s: %s must be a %s, is an %s", where_, name, want, kind)
    end
    return full
  end

  for _, qn in ipairs(defs.order) do
    local def = defs.byname[qn]
    if def.kind == "message" then
      for _, f in ipairs(def.fields) do
        local w = string.format("%s:%d", def.file, f.line)
        if not SCALARS[f.type] then f.type = resolve(f.type, f.scope, nil, w) end
        if f.label == "map" then
          f.type = string.format("map<%s, %s>", f.keytype, f.type)
        end
      end
    elseif def.kind == "service" then
      for _, m in ipairs(def.methods) do
        local w = string.format("%s:%d", def.file, m.line)
        m.req = resolve(m.req, m.scope, "message", w)
        m.resp = resolve(m.resp, m.scope, "message", w)
      end
    end
  end
end

local function load_set(dir, files, label)
  local defs = { byname = {}, order = {}, packages = {} }
  local per_file = {}
  for _, rel in ipairs(files) do
    local path = dir .. "/" .. rel
    local fh, err = io.open(path, "rb")
    if not fh then fail("cannot read %s's %s: %s", label, rel, err) end
    local src = fh:read("a")
    fh:close()
    per_file[rel] = parse_file(src, path, defs)
  end
  resolve_all(defs)
  return defs, per_file
end

---------------------------------------------------------------------------
-- Comparison
---------------------------------------------------------------------------

local function fmt_field(f)
  local s = (f.label == "singular" or f.label == "map") and "" or (f.label .. " ")
  s = s .. f.type .. " " .. f.name .. " = " .. f.number
  if f.oneof then s = s .. " (oneof " .. f.oneof .. ")" end
  return s
end

local function fmt_method(m)
  return string.format("rpc %s(%s%s) returns (%s%s)", m.name,
    m.client_stream and "stream " or "", m.req, m.server_stream and "stream " or "", m.resp)
end

local function compare(ours, theirs)
  local diffs = {}
  local function diff(fmt, ...) diffs[#diffs + 1] = string.format(fmt, ...) end
  local stats = { messages = 0, fields = 0, enums = 0, values = 0, services = 0, methods = 0 }

  local function by(list, key)
    local t = {}
    for _, x in ipairs(list) do t[x[key]] = x end
    return t
  end

  for _, qn in ipairs(ours.order) do
    local o, e = ours.byname[qn], theirs.byname[qn]
    local where_ = string.format("%s:%d", o.file, o.line)
    if not e then
      diff("%s: %s %s is not in etcd's files", where_, o.kind, qn)
    elseif e.kind ~= o.kind then
      diff("%s: %s is a %s here but a %s in etcd", where_, qn, o.kind, e.kind)
    elseif o.kind == "message" then
      local ok = true
      local enum_ = by(e.fields, "number")
      local ebyname = by(e.fields, "name")
      for _, f in ipairs(o.fields) do
        local ef = enum_[f.number]
        local fw = string.format("%s:%d", o.file, f.line)
        if not ef then
          ok = false
          if ebyname[f.name] then
            diff("%s: field %s.%s: number %d here, %d in etcd", fw, qn, f.name, f.number, ebyname[f.name].number)
          else
            diff("%s: field %s.%s = %d is not in etcd", fw, qn, f.name, f.number)
          end
        else
          local what = {}
          if ef.name ~= f.name then what[#what + 1] = "name" end
          if ef.type ~= f.type then what[#what + 1] = "type" end
          if ef.label ~= f.label then what[#what + 1] = "label" end
          if ef.oneof ~= f.oneof then what[#what + 1] = "oneof" end
          if #what > 0 then
            ok = false
            diff("%s: field %s #%d differs in %s: here `%s`, etcd `%s`", fw, qn, f.number,
              table.concat(what, ", "), fmt_field(f), fmt_field(ef))
          end
        end
      end
      local onum, oname = by(o.fields, "number"), by(o.fields, "name")
      for _, ef in ipairs(e.fields) do
        if not onum[ef.number] and not oname[ef.name] then
          ok = false
          diff("%s: field %s.%s missing: etcd has `%s`", where_, qn, ef.name, fmt_field(ef))
        end
      end
      if ok then
        stats.messages = stats.messages + 1
        stats.fields = stats.fields + #o.fields
      end
    elseif o.kind == "enum" then
      local ok = true
      local ebyname, ebynum = by(e.values, "name"), by(e.values, "number")
      for _, v in ipairs(o.values) do
        local ev = ebyname[v.name]
        local vw = string.format("%s:%d", o.file, v.line)
        if not ev then
          ok = false
          if ebynum[v.number] then
            diff("%s: enum value %s.%s = %d is named %s in etcd", vw, qn, v.name, v.number, ebynum[v.number].name)
          else
            diff("%s: enum value %s.%s = %d is not in etcd", vw, qn, v.name, v.number)
          end
        elseif ev.number ~= v.number then
          ok = false
          diff("%s: enum value %s.%s is %d here, %d in etcd", vw, qn, v.name, v.number, ev.number)
        end
      end
      local obyname, obynum = by(o.values, "name"), by(o.values, "number")
      for _, ev in ipairs(e.values) do
        if not obyname[ev.name] and not obynum[ev.number] then
          ok = false
          diff("%s: enum value %s.%s = %d missing (etcd has it)", where_, qn, ev.name, ev.number)
        end
      end
      if ok then
        stats.enums = stats.enums + 1
        stats.values = stats.values + #o.values
      end
    else -- service
      local ok = true
      local em = by(e.methods, "name")
      for _, m in ipairs(o.methods) do
        local mw = string.format("%s:%d", o.file, m.line)
        local x = em[m.name]
        if not x then
          ok = false
          diff("%s: rpc %s.%s is not in etcd", mw, qn, m.name)
        else
          local what = {}
          if x.req ~= m.req then what[#what + 1] = "request type" end
          if x.resp ~= m.resp then what[#what + 1] = "response type" end
          if x.client_stream ~= m.client_stream then what[#what + 1] = "client streaming" end
          if x.server_stream ~= m.server_stream then what[#what + 1] = "server streaming" end
          if #what > 0 then
            ok = false
            diff("%s: rpc %s.%s differs in %s: here `%s`, etcd `%s`", mw, qn, m.name,
              table.concat(what, ", "), fmt_method(m), fmt_method(x))
          end
        end
      end
      local om = by(o.methods, "name")
      for _, x in ipairs(e.methods) do
        if not om[x.name] then
          ok = false
          diff("%s: rpc %s.%s missing: etcd has `%s`", where_, qn, x.name, fmt_method(x))
        end
      end
      if ok then
        stats.services = stats.services + 1
        stats.methods = stats.methods + #o.methods
      end
    end
  end

  for _, qn in ipairs(theirs.order) do
    local e = theirs.byname[qn]
    if not ours.byname[qn] then
      diff("%s:%d: %s %s is missing from our files", e.file, e.line, e.kind, qn)
    end
  end
  return diffs, stats
end

---------------------------------------------------------------------------
-- Main
---------------------------------------------------------------------------

local function main(args)
  if #args ~= 2 then
    io.stderr:write("usage: lua5.4 tools/check-proto.lua UPSTREAM_DIR OURS_DIR\n")
    return 2
  end
  local upstream_dir, ours_dir = args[1], args[2]

  local theirs, their_counts = load_set(upstream_dir, UPSTREAM_FILES, "etcd")
  for _, f in ipairs(UPSTREAM_FILES) do
    local c, want = their_counts[f], PLAUSIBLE[f]
    for _, k in ipairs({ "messages", "enums", "services", "methods" }) do
      if c[k] < want[k] then
        fail("etcd's %s/%s yielded only %d %s (expected at least %d): wrong file or parser bug",
          upstream_dir, f, c[k], k, want[k])
      end
    end
  end
  local ours = load_set(ours_dir, OUR_FILES, "our")

  local diffs, s = compare(ours, theirs)
  if #diffs > 0 then
    for _, d in ipairs(diffs) do print(d) end
    io.stderr:write(string.format("check-proto: %d difference%s between %s and etcd's definitions in %s\n",
      #diffs, #diffs == 1 and "" or "s", ours_dir, upstream_dir))
    return 1
  end
  print(string.format(
    "check-proto: %d messages (%d fields), %d enums (%d values), %d services (%d methods) match etcd's definitions",
    s.messages, s.fields, s.enums, s.values, s.services, s.methods))
  return 0
end

local ok, res = xpcall(main, function(e)
  if type(e) == "table" and e.msg then return e end
  return debug.traceback(tostring(e), 2)
end, arg)
if not ok then
  if type(res) == "table" then
    io.stderr:write("check-proto: error: " .. res.msg .. "\n")
  else
    io.stderr:write("check-proto: internal error: " .. tostring(res) .. "\n")
  end
  os.exit(2)
end
os.exit(res)

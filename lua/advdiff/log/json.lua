--- advdiff.log.json: a small JSON encoder/decoder for logs and checkpoint
-- metadata.
--
-- Numbers round-trip exactly: integers are written as integers (Lua 5.4's
-- 64-bit integers stay integers), floats with 17 significant digits; NaN and
-- the infinities are written as Python's json module writes them (NaN,
-- Infinity, -Infinity) and read back. Tables with keys 1..n are arrays, other
-- tables objects with their keys sorted (so equal tables encode equally);
-- non-string keys of objects become strings. An empty table is {}.
local M = {}

local function esc(s)
  return (s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    if c == "\n" then return "\\n" end
    if c == "\t" then return "\\t" end
    if c == "\r" then return "\\r" end
    return string.format("\\u%04x", c:byte())
  end))
end

local function num(v)
  if math.type(v) == "integer" then return tostring(v) end
  if v ~= v then return "NaN" end
  if v == math.huge then return "Infinity" end
  if v == -math.huge then return "-Infinity" end
  if v == math.floor(v) and math.abs(v) < 1e15 then return string.format("%.1f", v) end
  local s = string.format("%.17g", v)
  -- the shortest form that reads back as the same double
  for p = 15, 16 do
    local t = string.format("%." .. p .. "g", v)
    if tonumber(t) == v then s = t; break end
  end
  return s
end

local function is_array(t)
  local n = #t
  if n == 0 then return false end
  local k = 0
  for _ in pairs(t) do k = k + 1 end
  return k == n
end

local function encode(v, out, indent, depth, seen)
  local tv = type(v)
  if v == nil then out[#out + 1] = "null"
  elseif tv == "boolean" then out[#out + 1] = v and "true" or "false"
  elseif tv == "number" then out[#out + 1] = num(v)
  elseif tv == "string" then out[#out + 1] = '"' .. esc(v) .. '"'
  elseif tv == "table" then
    if seen[v] then error("json.encode: a table contains itself", 0) end
    seen[v] = true
    local nl = indent and ("\n" .. string.rep(indent, depth + 1)) or ""
    local close = indent and ("\n" .. string.rep(indent, depth)) or ""
    if is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = nl
        encode(v[i], out, indent, depth + 1, seen)
      end
      out[#out + 1] = close .. "]"
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = k end
      table.sort(keys, function(a, b)
        local ta, tb = type(a), type(b)
        if ta == "number" and tb == "number" then return a < b end
        return tostring(a) < tostring(b)
      end)
      out[#out + 1] = "{"
      local first = true
      for _, k in ipairs(keys) do
        local x = v[k]
        if type(x) ~= "function" and type(x) ~= "userdata" then
          if not first then out[#out + 1] = "," end
          first = false
          out[#out + 1] = nl .. '"' .. esc(tostring(k)) .. '":' .. (indent and " " or "")
          encode(x, out, indent, depth + 1, seen)
        end
      end
      out[#out + 1] = (first and "" or close) .. "}"
    end
    seen[v] = nil
  else
    error("json.encode: cannot encode a " .. tv, 0)
  end
end

--- JSON text of v. opts.indent: a string (e.g. "  ") for pretty output.
function M.encode(v, opts)
  local out = {}
  encode(v, out, opts and opts.indent, 0, {})
  return table.concat(out)
end

---------------------------------------------------------------------------- decoding

local function decode_error(s, i, msg)
  error(string.format("json.decode: %s at character %d", msg, i), 0)
end

local skip_ws, parse_value

skip_ws = function(s, i)
  return s:find("[^ \t\r\n]", i) or #s + 1
end

local ESC = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function utf8_of(cp) return utf8.char(cp) end

local function parse_string(s, i)
  local out, j = {}, i + 1
  while true do
    local k = s:find('["\\]', j)
    if not k then decode_error(s, i, "unterminated string") end
    out[#out + 1] = s:sub(j, k - 1)
    if s:sub(k, k) == '"' then return table.concat(out), k + 1 end
    local c = s:sub(k + 1, k + 1)
    if ESC[c] then out[#out + 1] = ESC[c]; j = k + 2
    elseif c == "u" then
      local hex = s:sub(k + 2, k + 5)
      if not hex:match("^%x%x%x%x$") then decode_error(s, k, "bad \\u escape") end
      local cp = tonumber(hex, 16)
      j = k + 6
      if cp >= 0xD800 and cp <= 0xDBFF and s:sub(j, j + 1) == "\\u" then
        local lo = tonumber(s:sub(j + 2, j + 5), 16)
        if lo and lo >= 0xDC00 and lo <= 0xDFFF then
          cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
          j = j + 6
        end
      end
      out[#out + 1] = utf8_of(cp)
    else decode_error(s, k, "bad escape") end
  end
end

local function parse_number(s, i)
  local tok = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
  if not tok or tok == "" or tok == "-" then decode_error(s, i, "bad number") end
  local v
  if tok:find("[.eE]") then v = tonumber(tok) + 0.0 else v = math.tointeger(tonumber(tok)) or tonumber(tok) end
  if v == nil then decode_error(s, i, "bad number '" .. tok .. "'") end
  return v, i + #tok
end

parse_value = function(s, i)
  i = skip_ws(s, i)
  local c = s:sub(i, i)
  if c == "{" then
    local t = {}
    i = skip_ws(s, i + 1)
    if s:sub(i, i) == "}" then return t, i + 1 end
    while true do
      if s:sub(i, i) ~= '"' then decode_error(s, i, "expected a string key") end
      local k
      k, i = parse_string(s, i)
      i = skip_ws(s, i)
      if s:sub(i, i) ~= ":" then decode_error(s, i, "expected ':'") end
      t[k], i = parse_value(s, i + 1)
      i = skip_ws(s, i)
      local d = s:sub(i, i)
      if d == "}" then return t, i + 1 end
      if d ~= "," then decode_error(s, i, "expected ',' or '}'") end
      i = skip_ws(s, i + 1)
    end
  elseif c == "[" then
    local t = {}
    i = skip_ws(s, i + 1)
    if s:sub(i, i) == "]" then return t, i + 1 end
    while true do
      t[#t + 1], i = parse_value(s, i)
      i = skip_ws(s, i)
      local d = s:sub(i, i)
      if d == "]" then return t, i + 1 end
      if d ~= "," then decode_error(s, i, "expected ',' or ']'") end
      i = i + 1
    end
  elseif c == '"' then return parse_string(s, i)
  elseif s:sub(i, i + 3) == "true" then return true, i + 4
  elseif s:sub(i, i + 4) == "false" then return false, i + 5
  elseif s:sub(i, i + 3) == "null" then return nil, i + 4
  elseif s:sub(i, i + 2) == "NaN" then return 0 / 0, i + 3
  elseif s:sub(i, i + 7) == "Infinity" then return math.huge, i + 8
  elseif s:sub(i, i + 8) == "-Infinity" then return -math.huge, i + 9
  elseif c:match("[-%d]") then return parse_number(s, i)
  end
  decode_error(s, i, "unexpected '" .. c .. "'")
end

--- The Lua value of a JSON text (null -> nil).
function M.decode(s)
  if type(s) ~= "string" then error("json.decode: expected a string, got " .. type(s), 2) end
  local v, i = parse_value(s, 1)
  i = skip_ws(s, i)
  if i <= #s then decode_error(s, i, "trailing characters") end
  return v
end

return M

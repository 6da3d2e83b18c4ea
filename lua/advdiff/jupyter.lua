--- advdiff.jupyter: the advdiff side of the Jupyter kernel (jupyter/advdiff_kernel.py).
--
-- The kernel starts one `advdiff -e "require('advdiff.jupyter').serve(FD)"`
-- per notebook session; cells share its global state, as lines of the REPL
-- do. Protocol:
--   request  (stdin):  "<n>\n" then n bytes of Lua code
--   reply    (fd FD):  "<n>\n" then n bytes of JSON:
--     {status = "ok", values = {repr...}, displays = {{path=, temp=}...}}
--     {status = "error", ename =, evalue =, traceback = {lines...}, displays = ...}
-- The cell's stdout and stderr (print, io.write, C output) go to the
-- process's own stdout and stderr, which the kernel streams to the notebook
-- as they come; stdout is flushed before each reply, so all of a cell's
-- output arrives before its reply. Code is tried as `return <code>` first,
-- like the REPL, then with `return` before its last line, so a cell ending
-- in an expression shows its value (as in IPython). SIGINT interrupts the
-- running cell with the error "interrupted!" and the session goes on.
--
-- In cells, display(x [, opts]) shows an image inline: x is a PNG file path
-- or a tensor ((C, H, W), (H, W) or a (N, C, H, W) batch shown as a grid,
-- written with ad.image.save; opts as there, e.g. {range = {-1, 1}}).
local M = {}

local MAX_REPR = 4000

local function repr(v, depth)
  depth = depth or 0
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  local mt = getmetatable(v)
  if mt and mt.__tostring then return tostring(v) end
  if depth >= 2 then return tostring(v) end
  local parts, n = {}, 0
  for i = 1, #v do
    n = n + 1
    if n > 20 then parts[#parts + 1] = "..."; break end
    parts[#parts + 1] = repr(v[i], depth + 1)
  end
  local keys = {}
  for k in pairs(v) do
    if not (math.type(k) == "integer" and k >= 1 and k <= #v) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    n = n + 1
    if n > 20 then parts[#parts + 1] = "..."; break end
    local name = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or ("[" .. repr(k, depth + 1) .. "]")
    parts[#parts + 1] = name .. " = " .. repr(v[k], depth + 1)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end
M.repr = repr

local displays, tmpdir, n_images = {}, nil, 0

local function is_png(path)
  local f = io.open(path, "rb")
  if not f then return false, "cannot open '" .. path .. "'" end
  local sig = f:read(8)
  f:close()
  if sig ~= "\137PNG\r\n\26\n" then return false, "'" .. path .. "' is not a PNG file" end
  return true
end

--- display(path_or_tensor [, opts]): show a PNG file or a tensor as an image
-- under the current cell.
function M.display(x, opts)
  local ad = require "advdiff"
  if type(x) == "string" then
    local ok, err = is_png(x)
    if not ok then error("display: " .. err, 2) end
    displays[#displays + 1] = { path = x, temp = false }
    return
  end
  if not ad.is_tensor(x) then
    error("display: expected a PNG file path or an image tensor, got " .. type(x), 2)
  end
  if not tmpdir then
    tmpdir = os.tmpname()
    os.remove(tmpdir)
    if not os.execute("mkdir -p '" .. tmpdir .. "'") then error("display: cannot create a temporary folder", 2) end
  end
  n_images = n_images + 1
  local path = string.format("%s/display-%d.png", tmpdir, n_images)
  local t = x
  if t.requires_grad or t.grad_fn then t = t:detach() end
  if t:dtype() ~= "f32" and t:dtype() ~= "u8" then t = t:to("f32") end
  ad.image.save(path, t, opts)
  displays[#displays + 1] = { path = path, temp = true }
end

local function split_lines(s)
  local out = {}
  for l in (s .. "\n"):gmatch("(.-)\n") do out[#out + 1] = l end
  return out
end

--- Runs one cell's code; returns the reply table.
function M.execute(code)
  displays = {}
  local chunk, err = load("return " .. code, "=cell")
  if not chunk then
    -- as in IPython, a cell whose last line is an expression shows its value; only when the
    -- lines before it are whole statements: after "for ... do f(x)", `return end` compiles
    -- too, and would end the loop in its first pass
    local head, last = code:match("^(.*\n)([^\n]*%S[^\n]*)%s*$")
    if last and not last:match("^%s*%-%-") and load(head, "=cell") and load("return " .. last, "=cell") then
      chunk = load(head .. "return " .. last, "=cell")
    end
  end
  if not chunk then chunk, err = load(code, "=cell") end
  if not chunk then
    return { status = "error", ename = "SyntaxError", evalue = err, traceback = { err }, displays = {} }
  end
  local core = require "advdiff.core"
  core._proc_sigint_arm(true)
  local res = table.pack(xpcall(chunk, function(e)
    local msg = type(e) == "string" and e or repr(e)
    return { msg = msg, tb = debug.traceback(msg, 2) }
  end))
  core._proc_sigint_arm(false)
  debug.sethook() -- an interrupt that landed as the cell ended must not hit the next one
  io.stdout:flush()
  io.stderr:flush()
  if not res[1] then
    local e = res[2]
    local interrupted = e.msg:match("interrupted!$") ~= nil
    -- the frames of this driver below the cell say nothing to the user
    local tb = {}
    for _, l in ipairs(split_lines(e.tb)) do
      if l:find("advdiff/jupyter.lua", 1, true) or l:find("[C]: in function 'xpcall'", 1, true) then break end
      tb[#tb + 1] = l
    end
    return { status = "error", ename = interrupted and "Interrupted" or "LuaError", evalue = e.msg,
             traceback = tb, displays = displays }
  end
  local values = {}
  for i = 2, res.n do
    local ok, s = pcall(repr, res[i])
    s = ok and s or "<" .. type(res[i]) .. ">"
    if #s > MAX_REPR then s = s:sub(1, MAX_REPR) .. " ..." end
    values[#values + 1] = s
  end
  return { status = "ok", values = values, displays = displays }
end

--- The request loop; returns when stdin closes.
function M.serve(fd)
  local core = require "advdiff.core"
  local json = require "advdiff.log.json"
  local out = assert(io.open("/dev/fd/" .. tostring(fd), "w"))
  io.stdout:setvbuf("line")
  _G.ad = _G.ad or require "advdiff"
  _G.display = M.display
  core._proc_sigint_arm(false) -- armed only while a cell runs
  core._proc_on_sigint()
  while true do
    local header = io.stdin:read("l")
    if header == nil then break end
    local n = math.tointeger(tonumber(header))
    if not n or n < 0 then error("advdiff.jupyter: bad request header " .. string.format("%q", header)) end
    local code = n > 0 and io.stdin:read(n) or ""
    if code == nil or #code ~= n then break end
    -- every request gets exactly one reply, even when the interrupt lands
    -- just outside the cell's own protected call
    local ok, reply = pcall(M.execute, code)
    core._proc_sigint_arm(false)
    debug.sethook()
    if not ok then
      local msg = tostring(reply)
      reply = { status = "error", ename = msg:match("interrupted!$") and "Interrupted" or "DriverError", evalue = msg,
                traceback = { msg }, displays = displays }
    end
    local text = json.encode(reply)
    out:write(#text, "\n", text)
    out:flush()
  end
  if tmpdir then os.execute("rm -rf '" .. tmpdir .. "'") end
end

return M

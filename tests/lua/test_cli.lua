-- test_cli.lua: advdiff.config (override conversion and errors) and the
-- advdiff executable run as a child process: the `arg` table and `...`,
-- -e, a script on stdin, --set, error exits, the piped (non-terminal) REPL,
-- the Lua search path. The REPL on a terminal is tested by
-- tests/cli/test_repl.py, plain lua5.4 and the installed tree by
-- tests/cli/*.sh.
local config = require "advdiff.config"

local function expect_error(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching " .. pattern)
  err = tostring(err)
  assert(err:find(pattern, 1, true), "error '" .. err .. "' does not contain '" .. pattern .. "'")
  return err
end

local function eq(a, b, what)
  if a ~= b or math.type(a) ~= math.type(b) then
    error(string.format("%s: expected %s (%s), got %s (%s)", what or "value", tostring(b),
      math.type(b) or type(b), tostring(a), math.type(a) or type(a)), 2)
  end
end

local function list_eq(a, b, what)
  assert(type(a) == "table", (what or "value") .. ": expected a table")
  eq(#a, #b, (what or "list") .. " length")
  for i = 1, #b do eq(a[i], b[i], (what or "list") .. "[" .. i .. "]") end
end

local DEFAULTS = {
  lr = 5e-6, steps = 1000, clip = true, name = "run", sizes = { 32, 64 }, tags = { "a" },
  opt = { lr = 1e-3, betas = { 0.9, 0.999 }, nesterov = false },
}

-- ---- advdiff.config ---------------------------------------------------------

test("config: string overrides take the type of their default", function()
  local c = config.apply(DEFAULTS, {
    lr = "1e-4", steps = "250", clip = "false", name = "sweep 3", sizes = "1, 2,3", tags = "x,y",
    ["opt.lr"] = "2", ["opt.nesterov"] = "true", ["opt.betas"] = "0.5,0.6",
  })
  eq(c.lr, 1e-4, "lr")
  eq(c.steps, 250, "steps (integer default stays integer)")
  eq(c.clip, false, "clip")
  eq(c.name, "sweep 3", "name")
  list_eq(c.sizes, { 1, 2, 3 }, "sizes")
  list_eq(c.tags, { "x", "y" }, "tags (strings stay strings)")
  eq(c.opt.lr, 2.0, "opt.lr (float default gives a float)")
  eq(c.opt.nesterov, true, "opt.nesterov")
  list_eq(c.opt.betas, { 0.5, 0.6 }, "opt.betas")
end)

test("config: numbers: integers stay integers when integral, inf and hex accepted", function()
  eq(config.apply({ n = 1 }, { n = "1e3" }).n, 1000, "n = 1e3")
  eq(config.apply({ n = 1 }, { n = "0.5" }).n, 0.5, "n = 0.5 (not integral: a float)")
  eq(config.apply({ n = 1 }, { n = "0x10" }).n, 16, "n = 0x10")
  eq(config.apply({ x = 1.0 }, { x = "inf" }).x, math.huge, "x = inf")
  eq(config.apply({ x = 1.0 }, { x = "-inf" }).x, -math.huge, "x = -inf")
  list_eq(config.apply({ l = {} }, { l = "" }).l, {}, "empty list")
  list_eq(config.apply({ l = {} }, { l = "3,4" }).l, { 3, 4 }, "empty default list takes numbers")
end)

test("config: returns a deep copy and leaves the defaults alone", function()
  local c = config.apply(DEFAULTS, { ["opt.lr"] = "0.5" })
  eq(DEFAULTS.opt.lr, 1e-3, "defaults.opt.lr")
  assert(c ~= DEFAULTS and c.opt ~= DEFAULTS.opt and c.sizes ~= DEFAULTS.sizes, "tables must be copies")
  c.sizes[1] = 7
  eq(DEFAULTS.sizes[1], 32, "defaults.sizes[1]")
  local plain = config.apply(DEFAULTS)
  eq(plain.steps, 1000, "no overrides")
end)

test("config: non-string overrides must have the default's type", function()
  local c = config.apply(DEFAULTS, { lr = 0.25, clip = false, sizes = { 5 } })
  eq(c.lr, 0.25, "lr")
  eq(c.clip, false, "clip")
  list_eq(c.sizes, { 5 }, "sizes")
  expect_error("clip expects true or false, got 1", config.apply, DEFAULTS, { clip = 1 })
end)

test("config: an unknown key is an error listing the valid keys", function()
  local err = expect_error("config: unknown key 'lrr' (valid keys: clip, lr, name, opt.betas, opt.lr, "
    .. "opt.nesterov, sizes, steps, tags)", config.apply, DEFAULTS, { lrr = "1" })
  assert(not err:find("\n"), "one line: " .. err)
  expect_error("unknown key 'opt.lrr'", config.apply, DEFAULTS, { ["opt.lrr"] = "1" })
  expect_error("unknown key 'lr.x'", config.apply, DEFAULTS, { ["lr.x"] = "1" })
  expect_error("unknown key 'sizes.1'", config.apply, DEFAULTS, { ["sizes.1"] = "1" })
  expect_error("unknown key 'opt.'", config.apply, DEFAULTS, { ["opt."] = "1" })
end)

test("config: bad values name the key and what it expects", function()
  expect_error("config: lr expects a number, got \"abc\"", config.apply, DEFAULTS, { lr = "abc" })
  expect_error("clip expects true or false, got \"yes\"", config.apply, DEFAULTS, { clip = "yes" })
  expect_error("sizes[2] expects a number, got \"x\"", config.apply, DEFAULTS, { sizes = "1,x" })
  expect_error("sizes expects a comma list like 1,2,3, got \"1,,2\"", config.apply, DEFAULTS, { sizes = "1,,2" })
  expect_error("'opt' is a group of options; set one of them (opt.betas, opt.lr, opt.nesterov)",
    config.apply, DEFAULTS, { opt = "1" })
  expect_error("config: defaults must be a table, got nil", config.apply, nil, {})
end)

test("config: callable; overrides are empty without the executable's --set", function()
  eq(next(config.overrides), nil, "config.overrides")
  eq(config(DEFAULTS).lr, 5e-6, "config(defaults)")
  eq(config(DEFAULTS, { lr = "1" }).lr, 1.0, "config(defaults, overrides)")
end)

test("config: reachable as ad.config", function()
  local ad = require "advdiff"
  assert(ad.config == config, "ad.config must be require('advdiff.config')")
end)

-- ---- the executable, as a child process -----------------------------------

local EXE
do
  local i = -1
  while arg and arg[i - 1] do i = i - 1 end
  EXE = arg and arg[i]
end

local q = require("advdiff.testing").shell_quote

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function spit(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  return path
end

local tmpfiles = {}
local function tmpname()
  local p = os.tmpname()
  tmpfiles[#tmpfiles + 1] = p
  return p
end

-- run a shell command line; returns stdout, stderr, exit code
local function sh(cmdline, stdin)
  local out, err = tmpname(), tmpname()
  local inp = stdin and spit(tmpname(), stdin) or "/dev/null"
  local _, _, code = os.execute(string.format("%s <%s >%s 2>%s", cmdline, q(inp), q(out), q(err)))
  return slurp(out), slurp(err), code
end

-- advdiff with the given (already quoted) arguments
local function run(args, stdin, env)
  return sh((env or "") .. " " .. q(EXE) .. " " .. args, stdin)
end

local function need_exe()
  if not EXE or not EXE:find("advdiff[^/]*$") then skip("not run by the advdiff executable") end
end

local function script(src) return spit(tmpname(), src) end

local DUMP = [[
local keys = {}
for k in pairs(arg) do keys[#keys + 1] = k end
table.sort(keys)
for _, k in ipairs(keys) do
  if k ~= keys[1] then io.write(k, "=", arg[k], "\n") end  -- all but the program name
end
io.write("... = ", table.concat({ ... }, " "), " (", select("#", ...), ")\n")
]]

test("cli: arg and ... are those lua5.4 gives", function()
  need_exe()
  local dump = script(DUMP)
  local args = "-e 'x = 1' " .. q(dump) .. " a 'b c' -x -- --y"
  local out, err, code = run(args)
  eq(code, 0, "exit code (stderr: " .. err .. ")")
  assert(out:find("0=" .. dump .. "\n", 1, true), out)
  assert(out:find("-2=-e\n-1=x = 1\n", 1, true), out)
  assert(out:find("1=a\n2=b c\n3=-x\n4=--\n5=--y\n... = a b c -x -- --y (5)\n", 1, true), out)
  local lout, _, lcode = sh("lua5.4 " .. args)
  if lcode == 127 then return end -- no lua5.4 to compare with
  eq(out, lout, "same output as lua5.4")
end)

test("cli: --set is taken out of the script's arguments, up to --", function()
  need_exe()
  local dump = script(DUMP .. [[
local keys = {}
for k, v in pairs(require("advdiff.config").overrides) do keys[#keys + 1] = k .. "=" .. v end
table.sort(keys)
print("overrides: " .. table.concat(keys, " "))
]])
  local out, err, code = run("--set a=1 " .. q(dump) .. " x --set b.c=2 y --set=d=e=f -- --set z=3")
  eq(code, 0, "exit code (stderr: " .. err .. ")")
  assert(out:find("1=x\n2=y\n3=--\n4=--set\n5=z=3\n", 1, true), out)
  assert(out:find("... = x y -- --set z=3 (5)\n", 1, true), out)
  assert(out:find("overrides: a=1 b.c=2 d=e=f\n", 1, true), out)
  local _, err2, code2 = run(q(dump) .. " --set nokey")
  eq(code2, 1, "exit code of a malformed --set")
  assert(err2:find("'--set' needs key=value, got 'nokey'", 1, true), err2)
end)

test("cli: --set reaches the script's config, converted, dotted, checked", function()
  need_exe()
  local s = script([[
local cfg = require("advdiff.config"){ lr = 1e-3, steps = 10, amp = false, sizes = { 1 }, opt = { beta = 0.9 } }
print(cfg.lr, cfg.steps, math.type(cfg.steps), cfg.amp, table.concat(cfg.sizes, "/"), cfg.opt.beta)
]])
  local out, err, code = run(q(s) .. " --set lr=1e-4 --set steps=20 --set amp=true --set sizes=4,5,6 --set opt.beta=0.5")
  eq(code, 0, "exit code (stderr: " .. err .. ")")
  eq(out, "0.0001\t20\tinteger\ttrue\t4/5/6\t0.5\n", "config printed by the script")
  out, err, code = run("--set opt.betaa=1 " .. q(s))
  eq(code, 1, "exit code for an unknown key")
  assert(err:find("^advdiff: config: unknown key 'opt.betaa' %(valid keys: amp, lr, opt.beta, sizes, steps%)"), err)
  out, err, code = run(q(s) .. " --set steps=many")
  eq(code, 1, "exit code for a bad value")
  assert(err:find("config: steps expects a number, got \"many\"", 1, true), err)
end)

test("cli: several -e, then a script", function()
  need_exe()
  local s = script("print('script', a + b, ...)")
  local out, err, code = run("-e 'a = 1' -e 'b = a + 1' -e 'print(b)' " .. q(s) .. " z")
  eq(code, 0, "exit code (stderr: " .. err .. ")")
  eq(out, "2\nscript\t3\tz\n", "output")
  out = run("-e 'print(type(ad), type(package.preload[\"advdiff.core\"]))'")
  eq(out, "table\tfunction\n", "-e sees `ad`, and advdiff.core is built in")
  out = run("-l s=string -e 'print(s.upper(\"ok\"))'")
  eq(out, "OK\n", "-l g=mod")
end)

test("cli: a script from stdin with -", function()
  need_exe()
  local out, err, code = run("- p q", "print('stdin', arg[0], ...)")
  eq(code, 0, "exit code (stderr: " .. err .. ")")
  eq(out, "stdin\t-\tp\tq\n", "output")
end)

test("cli: errors print 'advdiff: msg' with a traceback and exit 1", function()
  need_exe()
  local s = script("local function f() error('boom') end\nf()\n")
  local out, err, code = run(q(s))
  eq(code, 1, "exit code")
  eq(out, "", "stdout")
  assert(err:find("^advdiff: [^\n]*:1: boom\nstack traceback:\n"), err)
  assert(err:find("in local 'f'", 1, true) or err:find("in function 'f'", 1, true) or err:find("in upvalue 'f'", 1, true), err)
  _, err, code = run(q(script("x = = 1")))
  eq(code, 1, "exit code of a syntax error")
  assert(err:find("^advdiff: [^\n]*:1: unexpected symbol near '='"), err)
  _, err, code = run(q("/nonexistent/script.lua"))
  eq(code, 1, "exit code of a missing script")
  assert(err:find("^advdiff: cannot open /nonexistent/script.lua"), err)
  _, err, code = run("-e 'error({})'")
  eq(code, 1, "exit code of a non-string error")
  assert(err:find("(error object is a table value)", 1, true), err)
  _, err, code = run("-e 'os.exit(3)'")
  eq(code, 3, "os.exit code")
end)

test("cli: Ctrl-C (SIGINT) stops a running script with 'interrupted!'", function()
  need_exe()
  -- signal until it is gone: the handler may not be installed yet at the first try
  local out, err, code = sh("( " .. q(EXE) .. " -e 'while true do end' & pid=$!; i=0; "
    .. "while kill -0 $pid 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; kill -INT $pid 2>/dev/null; i=$((i+1)); done; "
    .. "kill -9 $pid 2>/dev/null; wait $pid )")
  eq(code, 1, "exit code (stdout: " .. out .. ")")
  assert(err:find("^advdiff: interrupted!\nstack traceback:\n"), err)
end)

test("cli: -v, --help and a bad option", function()
  need_exe()
  local out, _, code = run("-v")
  eq(code, 0, "-v exit code")
  assert(out:find("^advdiff %d+%.%d+%.%d+ %(Lua 5%.4"), out)
  out, _, code = run("--help")
  eq(code, 0, "--help exit code")
  assert(out:find("--set key=value", 1, true) and out:find("usage:", 1, true), out)
  local err
  out, err, code = run("--frobnicate")
  eq(code, 1, "bad option exit code")
  assert(err:find("unrecognized option '--frobnicate'", 1, true), err)
  _, err, code = run("-e")
  eq(code, 1, "-e without an argument")
  assert(err:find("'-e' needs an argument", 1, true), err)
end)

test("cli: piped stdin is a REPL without prompts; errors continue, exit 1", function()
  need_exe()
  local out, err, code = run("", "1+1\nfunction g(a)\n  return a * 3\nend\ng(5)\n"
    .. "return 'x', nil, 2\nerror('bad')\nlocal t = {}\n'after'\n")
  eq(code, 1, "exit code after a failed line (stderr: " .. err .. ")")
  eq(out, "2\n15\nx\tnil\t2\nafter\n", "output")
  assert(err:find("^stdin:1: bad\nstack traceback:"), err)
  out, _, code = run("", "1+1\n")
  eq(code, 0, "exit code when nothing failed")
  eq(out, "2\n", "output")
  -- tensors print through their __tostring, as `print` shows them
  local shown = run("", "ad.zeros(2, 3)\n")
  local direct = run("-e 'print(tostring(ad.zeros(2, 3)))'")
  eq(shown, direct, "a tensor result")
  assert(#shown > 1, "a tensor prints something")
end)

test("cli: package.path: ADVDIFF_LUA_PATH first, then the source tree", function()
  need_exe()
  local probe = "-e 'print(package.searchpath(\"advdiff.config\", package.path))'"
  local out = run(probe, nil, "ADVDIFF_LUA_PATH=")
  assert(out:find("/lua/advdiff/config.lua\n$"), out)
  local here = tmpname()
  os.remove(here)
  assert(os.execute("mkdir -p " .. q(here .. "/advdiff")))
  spit(here .. "/advdiff/config.lua", "return {}")
  out = run(probe, nil, "ADVDIFF_LUA_PATH=" .. q(here))
  eq(out, here .. "/advdiff/config.lua\n", "a directory in ADVDIFF_LUA_PATH")
  out = run(probe, nil, "ADVDIFF_LUA_PATH=" .. q("/nowhere:" .. here))
  eq(out, here .. "/advdiff/config.lua\n", "a list of directories")
  out = run(probe, nil, "ADVDIFF_LUA_PATH=" .. q(here .. "/?.lua"))
  eq(out, here .. "/advdiff/config.lua\n", "a path template")
  out = run("-E " .. probe, nil, "ADVDIFF_LUA_PATH=" .. q(here))
  assert(out ~= here .. "/advdiff/config.lua\n", "-E ignores ADVDIFF_LUA_PATH")
  os.remove(here .. "/advdiff/config.lua")
  os.remove(here .. "/advdiff")
  os.remove(here)
end)

for _, p in ipairs(tmpfiles) do os.remove(p) end

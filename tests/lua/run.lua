-- run.lua: the Lua test runner. Usage: advdiff tests/lua/run.lua FILE...
-- A test file calls the global `test(name, fn)`; `skip(reason)` inside a test
-- marks it skipped. Prints one line per test and ends with
-- "N passed, N failed, N skipped"; exits 1 when anything failed.
local passed, failed, skipped = 0, 0, 0
local SKIP = setmetatable({}, { __tostring = function() return "skip" end })

function skip(reason) error({ [SKIP] = true, reason = reason }, 0) end

local only = os.getenv("ADVDIFF_TEST_ONLY")
function test(name, fn)
  if only and not name:find(only, 1, true) then return end
  local t0 = os.clock()
  local ok, err = xpcall(fn, function(e)
    if type(e) == "table" and e[SKIP] then return e end
    return debug.traceback(tostring(e), 2)
  end)
  collectgarbage()
  if ok then
    passed = passed + 1
    print(string.format("ok    %s (%.2fs)", name, os.clock() - t0))
  elseif type(err) == "table" and err[SKIP] then
    skipped = skipped + 1
    print(string.format("skip  %s: %s", name, err.reason or ""))
  else
    failed = failed + 1
    print(string.format("FAIL  %s\n%s", name, err))
  end
end

local files = { ... }
if #files == 0 then files = arg or {} end
for _, f in ipairs(files) do
  local chunk, err = loadfile(f)
  if not chunk then
    failed = failed + 1
    print("FAIL  loading " .. f .. ": " .. err)
  else
    local ok, e = xpcall(chunk, debug.traceback)
    if not ok then failed = failed + 1; print("FAIL  running " .. f .. ": " .. e) end
  end
end
print(string.format("%d passed, %d failed, %d skipped", passed, failed, skipped))
if failed > 0 then os.exit(1) end

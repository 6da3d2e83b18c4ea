-- test_jupyter.lua: how advdiff.jupyter runs a notebook cell (the advdiff side
-- of the Jupyter kernel): a value shown for a cell ending in an expression,
-- and statements left alone otherwise.
local jupyter = require "advdiff.jupyter"

test("jupyter: a cell ending in an expression returns its value", function()
  local r = jupyter.execute("local a = 2\na * 3")
  assert(r.status == "ok" and r.values[1] == "6", require("advdiff.log.json").encode(r))
  r = jupyter.execute("1 + 1")
  assert(r.status == "ok" and r.values[1] == "2")
  r = jupyter.execute("jupyter_t = {}\njupyter_t[1] = 5\njupyter_t[1] + 1\n\n")
  assert(r.status == "ok" and r.values[1] == "6")
  jupyter_t = nil
end)

test("jupyter: a cell ending in a block runs the block as written", function()
  -- "return" before the last line "end" compiles, and would end the loop after one pass
  local r = jupyter.execute("jupyter_n = 0\nfor _, x in ipairs({1, 2, 3}) do\n  jupyter_n = jupyter_n + x\nend")
  assert(r.status == "ok" and #r.values == 0)
  assert(jupyter_n == 6, "the loop ran " .. tostring(jupyter_n))
  r = jupyter.execute("jupyter_n = 0\nlocal i = 0\nwhile i < 4 do\n  i = i + 1\n  jupyter_n = jupyter_n + 1\nend")
  assert(r.status == "ok" and jupyter_n == 4)
  r = jupyter.execute("jupyter_n = 0\nif true then\n  jupyter_n = 1\nend")
  assert(r.status == "ok" and jupyter_n == 1 and #r.values == 0)
  jupyter_n = nil
end)

test("jupyter: errors are reported with their kind", function()
  local r = jupyter.execute("local = 1")
  assert(r.status == "error" and r.ename == "SyntaxError", r.ename)
  r = jupyter.execute("error('boom')")
  assert(r.status == "error" and r.ename == "LuaError" and r.evalue:find("boom", 1, true))
end)

--- advdiff.diffusion.schedule: beta schedules and timestep respacing, exactly
-- as guided-diffusion's get_named_beta_schedule, betas_for_alpha_bar and
-- respace.space_timesteps. Everything here is plain Lua numbers (IEEE doubles,
-- i.e. NumPy's float64), computed in the same order as NumPy does, so the
-- schedules agree with the reference to the last bit or nearly so.
local M = {}

local function check_steps(fname, n)
  if math.type(n) ~= "integer" then
    if type(n) == "number" and n == math.floor(n) then n = math.tointeger(n)
    else error(string.format("%s: number of diffusion steps must be a positive integer, got %s", fname, tostring(n)), 3) end
  end
  if n < 1 then error(string.format("%s: number of diffusion steps must be positive, got %d", fname, n), 3) end
  return n
end

--- np.linspace(start, stop, n) in float64: i*step + start, the last value is stop.
function M.linspace(start, stop, n)
  local out = {}
  if n == 1 then out[1] = start; return out end
  local step = (stop - start) / (n - 1)
  for i = 0, n - 1 do out[i + 1] = i * step + start end
  out[n] = stop
  return out
end

--- betas that discretize alpha_bar(t), t in [0, 1], clipped at max_beta (0.999).
function M.betas_for_alpha_bar(num_diffusion_timesteps, alpha_bar, max_beta)
  local n = check_steps("betas_for_alpha_bar", num_diffusion_timesteps)
  max_beta = max_beta or 0.999
  local betas = {}
  for i = 0, n - 1 do
    local t1, t2 = i / n, (i + 1) / n
    betas[i + 1] = math.min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta)
  end
  return betas
end

--- The cosine schedule's alpha_bar (Nichol & Dhariwal 2021).
function M.cosine_alpha_bar(t)
  return math.cos((t + 0.008) / 1.008 * math.pi / 2) ^ 2
end

--- get_named_beta_schedule(name, steps) -> Lua array of float64 betas.
-- "linear": Ho et al.'s 1e-4 .. 0.02, scaled by 1000/steps; "cosine": with the 0.999 clip.
function M.get_named_beta_schedule(name, num_diffusion_timesteps)
  local n = check_steps("get_named_beta_schedule", num_diffusion_timesteps)
  if name == "linear" then
    local scale = 1000 / n
    return M.linspace(scale * 0.0001, scale * 0.02, n)
  elseif name == "cosine" then
    return M.betas_for_alpha_bar(n, M.cosine_alpha_bar)
  end
  error(string.format("unknown noise schedule '%s' (expected linear or cosine)", tostring(name)), 2)
end

-- Python's round(): half to even.
local function round_half_even(x)
  local f = math.floor(x)
  local d = x - f
  if d > 0.5 then return f + 1 end
  if d < 0.5 then return f end
  return (f % 2 == 0) and f or f + 1
end

local function parse_int(s, what, whole)
  local v = s:match("^%s*(%d+)%s*$")
  if not v then
    error(string.format("bad timestep_respacing '%s': %s '%s' is not a non-negative integer", whole, what, s), 4)
  end
  return math.tointeger(tonumber(v))
end

--- space_timesteps(num_timesteps, section_counts) -> sorted Lua array of the
-- retained original timesteps (0-based). section_counts: "100", "10,10,10",
-- "ddimN", a Lua array of counts, or a number.
function M.space_timesteps(num_timesteps, section_counts)
  local T = check_steps("space_timesteps", num_timesteps)
  local counts
  if type(section_counts) == "string" then
    local s = section_counts
    if s:sub(1, 4) == "ddim" then
      local desired = parse_int(s:sub(5), "step count", s)
      for i = 1, T - 1 do
        if (T + i - 1) // i == desired then    -- len(range(0, T, i))
          local steps = {}
          for k = 0, T - 1, i do steps[#steps + 1] = k end
          return steps
        end
      end
      error(string.format("bad timestep_respacing '%s': cannot create exactly %d steps out of %d with an integer stride",
        s, desired, T), 2)
    end
    counts = {}
    if s:match("^%s*$") then
      error("bad timestep_respacing '': expected section counts like \"100\" or \"10,10,10\", or \"ddimN\"", 2)
    end
    for part in (s .. ","):gmatch("([^,]*),") do counts[#counts + 1] = parse_int(part, "section count", s) end
  elseif type(section_counts) == "number" then
    counts = { math.tointeger(section_counts) or error("space_timesteps: section count must be an integer", 2) }
  elseif type(section_counts) == "table" then
    counts = {}
    for i, c in ipairs(section_counts) do
      counts[i] = math.tointeger(c) or error(string.format("space_timesteps: section count %d must be an integer", i), 2)
    end
    if #counts == 0 then error("space_timesteps: empty list of section counts", 2) end
  else
    error("space_timesteps: section_counts must be a string, a number or a list of numbers, got " .. type(section_counts), 2)
  end

  local n_sec = #counts
  local size_per, extra = T // n_sec, T % n_sec
  local start_idx = 0
  local seen, all = {}, {}
  for i, section_count in ipairs(counts) do
    local size = size_per + ((i - 1) < extra and 1 or 0)
    if size < section_count then
      error(string.format("bad timestep_respacing: cannot divide section of %d steps into %d", size, section_count), 2)
    end
    local frac_stride
    if section_count <= 1 then frac_stride = 1 else frac_stride = (size - 1) / (section_count - 1) end
    local cur_idx = 0.0
    for _ = 1, section_count do
      local step = start_idx + math.tointeger(round_half_even(cur_idx))
      if not seen[step] then seen[step] = true; all[#all + 1] = step end
      cur_idx = cur_idx + frac_stride
    end
    start_idx = start_idx + size
  end
  table.sort(all)
  return all
end

return M

-- Bad input: every row is a wrong call that must raise a Lua error whose
-- message says what was wrong (never a crash, never a silent result).
local ad = require "advdiff"

local x2 = ad.randn(2, 3)
local x4 = ad.randn(2, 3, 8, 8)
local w4 = ad.randn(4, 3, 3, 3)
local i64 = ad.tensor{0, 1}

local CASES = {
  -- {description, function, expected substring}
  {"add shape mismatch", function() return ad.add(ad.zeros(2, 3), ad.zeros(4)) end, "cannot be broadcast"},
  {"add nil", function() return ad.add(nil, x2) end, "bad argument #1 to 'add'"},
  {"mul string", function() return x2 * "a" end, "number expected"},
  {"matmul shapes", function() return ad.matmul(ad.zeros(2, 3), ad.zeros(4, 5)) end, "matmul"},
  {"matmul 0-d", function() return ad.matmul(ad.tensor(1.0), x2) end, "matmul"},
  {"bmm ranks", function() return ad.bmm(x2, x2) end, "bmm"},
  {"linear in_features", function() return ad.linear(x2, ad.zeros(4, 5)) end, "linear"},
  {"conv2d 3-D weight", function() return ad.conv2d(x4, ad.zeros(8, 3, 3)) end,
   "conv2d: weight must be 4-D (out, in/groups, kh, kw), got 3-D [8, 3, 3]"},
  {"conv2d channels", function() return ad.conv2d(x4, ad.zeros(4, 5, 3, 3)) end, "conv2d"},
  {"conv2d groups", function() return ad.conv2d(x4, w4, nil, {groups = 2}) end, "conv2d"},
  {"conv2d stride 0", function() return ad.conv2d(x4, w4, nil, {stride = 0}) end, "stride"},
  {"conv2d input too small", function() return ad.conv2d(ad.zeros(1, 3, 2, 2), w4) end, "conv2d"},
  {"max_pool2d kernel", function() return ad.max_pool2d(x4, 0) end, "kernel"},
  {"interpolate mode", function() return ad.interpolate(x4, {size = {4, 4}, mode = "cubic"}) end, "mode"},
  {"group_norm groups", function() return ad.group_norm(x4, 2, nil, nil) end, "group_norm"},
  {"batch_norm stats shape", function() return ad.batch_norm(x4, ad.zeros(4), ad.ones(4), nil, nil) end, "batch_norm"},
  {"layer_norm shape", function() return ad.layer_norm(x2, {4}) end, "layer_norm"},
  {"softmax dim", function() return ad.softmax(x2, 3) end, "out of range"},
  {"embedding index", function() return ad.embedding(ad.tensor{12}, ad.zeros(10, 4)) end,
   "embedding: index 12 out of range for 10 rows"},
  {"embedding float index", function() return ad.embedding(ad.tensor{1.5}, ad.zeros(10, 4)) end, "embedding"},
  {"cross_entropy target range", function() return ad.cross_entropy(x2, ad.tensor{0, 7}) end, "cross_entropy"},
  {"cross_entropy float target", function() return ad.cross_entropy(x2, ad.tensor{0.0, 1.0}) end, "cross_entropy"},
  {"mse shapes", function() return ad.mse_loss(x2, ad.zeros(3, 2)) end, "mse_loss"},
  {"bce shapes", function() return ad.binary_cross_entropy_with_logits(x2, ad.zeros(5)) end, "binary_cross_entropy"},
  {"attention shapes", function() return ad.scaled_dot_product_attention(ad.zeros(2, 4, 8), ad.zeros(2, 5, 7), ad.zeros(2, 5, 8)) end, "attention"},
  {"sum dim", function() return x2:sum(3) end, "dimension 3 out of range for a 2-D tensor"},
  {"max of empty", function() return ad.zeros(0):max() end, "max"},
  {"view", function() return x2:view(4, 2) end, "invalid for input of shape [2, 3]"},
  {"view after permute", function() return ad.zeros(2, 3, 4):permute(3, 1, 2):view(-1) end, "use reshape"},
  {"reshape two -1", function() return x2:reshape(-1, -1) end, "only one dimension can be -1"},
  {"expand", function() return x2:expand(4, 3) end, "expand: cannot expand shape [2, 3] to [4, 3]"},
  {"cat dims", function() return ad.cat({x2, ad.zeros(2, 4)}, 1) end, "cat: tensor 2 has shape [2, 4]"},
  {"cat empty", function() return ad.cat({}) end, "non-empty list"},
  {"stack mismatch", function() return ad.stack({x2, ad.zeros(3, 2)}) end, "stack"},
  {"narrow range", function() return x2:narrow(2, 3, 2) end, "narrow"},
  {"select index", function() return x2:select(1, 3) end, "out of range"},
  {"index out of range", function() return x2[3] end, "index 3 out of range for size 2"},
  {"index_select index", function() return x2:index_select(1, ad.tensor{5}) end, "index_select: index 5 out of range"},
  {"permute count", function() return x2:permute(1) end, "permute"},
  {"transpose dim", function() return x2:transpose(1, 5) end, "out of range"},
  {"item of many", function() return x2:item() end, "only one-element tensors"},
  {"tensor ragged", function() return ad.tensor{{1, 2}, {3}} end, "ragged"},
  {"tensor of strings", function() return ad.tensor{"a"} end, "numbers or booleans"},
  {"zeros negative", function() return ad.zeros(-1) end, "non-negative"},
  {"zeros huge", function() return ad.zeros(1 << 40, 1 << 40) end, "too large"},
  {"unknown dtype", function() return ad.zeros(2, {dtype = "f128"}) end, "unknown dtype 'f128'"},
  {"dtype option type", function() return ad.zeros(2, {dtype = 32}) end, "option 'dtype'"},
  {"cuda without a GPU", function() return ad.zeros(2, {device = "cuda"}) end, "no CUDA device"},
  {"x:cuda() without a GPU", function() return x2:cuda() end, "no CUDA device"},
  {"requires_grad on ints", function() i64.requires_grad = true end, "only floating-point tensors"},
  {"backward non-scalar", function() local y = ad.randn(3, {requires_grad = true}) * 2; y:backward() end,
   "implicitly created only for one-element"},
  {"backward no grad", function() ad.ones(1):backward() end, "does not require grad"},
  {"grad wrong shape", function() local t = ad.zeros(2); t.grad = ad.zeros(3) end, "assigned gradient has shape [3]"},
  {"unknown field", function() x2.foo = 1 end, "cannot set field 'foo'"},
  {"arange step 0", function() return ad.arange(0, 1, 0) end, "step"},
  {"randint range", function() return ad.randint(5, 5, {3}) end, "randint: high (5) must be greater than low (5)"},
  {"randn int dtype", function() return ad.randn(2, {dtype = "i64"}) end, "randn: dtype must be floating point"},
  {"freed tensor", function() local t = ad.zeros(2); t:free(); return t + 1 end, "freed"},
  {"pow shapes", function() return ad.pow(ad.zeros(2), ad.zeros(3)) end, "cannot be broadcast"},
  {"where shapes", function() return ad.where(ad.tensor{true, false}, ad.zeros(3), ad.zeros(3)) end, "cannot be broadcast"},
  {"clamp args", function() return ad.clamp(x2, "a") end, "clamp"},
}

for _, c in ipairs(CASES) do
  test(c[1], function()
    local ok, err = pcall(c[2])
    assert(not ok, c[1] .. ": expected an error, got success")
    err = tostring(err)
    assert(err:find(c[3], 1, true), c[1] .. ": message '" .. err .. "' does not contain '" .. c[3] .. "'")
  end)
end

test("the library still works after all those errors", function()
  local y = (ad.randn(3, {requires_grad = true}) * 2):sum()
  y:backward()
end)

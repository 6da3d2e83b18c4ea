#!/bin/sh
# test_embed.sh: advdiff is a plain Lua module too. `require "advdiff"` works
# from the system lua5.4, with the built C module on LUA_CPATH and the source
# tree's Lua files on LUA_PATH, and sees no config overrides.
#   sh tests/cli/test_embed.sh SOURCE_DIR BUILT_MODULE   (.../advdiff/core.so)
set -eu
src=$1
so=$2
cdir=$(dirname "$(dirname "$so")")
if ! command -v lua5.4 >/dev/null 2>&1; then
  echo "skip: no lua5.4 on PATH"
  exit 77
fi
unset LUA_INIT LUA_INIT_5_4 ADVDIFF_LUA_PATH
export LUA_CPATH="$cdir/?.so"
export LUA_PATH="$src/lua/?.lua;$src/lua/?/init.lua"
cd "$cdir"
lua5.4 - "$so" <<'LUA'
local so = ...
assert(package.searchpath("advdiff.core", package.cpath) == so, "advdiff.core resolves to " .. so)
local ad = require "advdiff"
assert(package.loaded["advdiff.core"], "advdiff.core loaded from the shared module")
local x = ad.zeros(2, 3)
assert(x:numel() == 6, "ad.zeros(2, 3):numel()")
local config = require "advdiff.config"
assert(next(config.overrides) == nil, "no overrides outside the executable")
assert(config({ lr = 1 }).lr == 1, "config(defaults) without overrides")
assert(config({ lr = 1 }, { lr = "2" }).lr == 2, "config(defaults, overrides)")
print("ok    require 'advdiff' from lua5.4")
LUA

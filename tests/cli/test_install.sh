#!/bin/sh
# test_install.sh: `cmake --install` into a fresh prefix, then
#   - the installed advdiff runs a script with --set, using the installed Lua
#     files (not the source tree's), also after the prefix is moved;
#   - the system lua5.4 requires advdiff from the installed paths alone.
#   sh tests/cli/test_install.sh CMAKE_COMMAND BUILD_DIR
set -eu
cmake=$1
build=$2
tmp=$(cd "$(mktemp -d)" && pwd -P)
trap 'rm -rf "$tmp"' EXIT
unset LUA_INIT LUA_INIT_5_4 ADVDIFF_LUA_PATH LUA_PATH LUA_CPATH LUA_PATH_5_4 LUA_CPATH_5_4
fail() { echo "FAIL  $*"; exit 1; }

prefix=$tmp/prefix
"$cmake" --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "cmake --install"; }
exe=$prefix/bin/advdiff
[ -x "$exe" ] || fail "no $exe"
init=$(find "$prefix" -path '*/advdiff/init.lua' | head -n 1)
so=$(find "$prefix" -path '*/advdiff/core.so' | head -n 1)
[ -n "$init" ] || fail "advdiff/init.lua not installed"
[ -n "$so" ] || fail "advdiff/core.so not installed"
[ -f "${init%/init.lua}/config.lua" ] || fail "advdiff/config.lua not installed"
luadir=${init%/advdiff/init.lua}
cdir=${so%/advdiff/core.so}
cd "$tmp"

cat >script.lua <<'LUA'
local ad = require "advdiff"
local cfg = ad.config { steps = 1, name = "x" }
print(package.searchpath("advdiff", package.path), cfg.steps, cfg.name, ...)
LUA
out=$("$exe" script.lua a --set steps=7 b --set name=yz)
[ "$out" = "$(printf '%s\t7\tyz\ta\tb' "$luadir/advdiff/init.lua")" ] || fail "installed advdiff printed: $out"
echo "ok    the installed advdiff runs a script with its own Lua files"

mv "$prefix" "$tmp/moved"
out=$("$tmp/moved/bin/advdiff" -e 'print(package.searchpath("advdiff.config", package.path))')
[ "$out" = "$tmp/moved${luadir#$prefix}/advdiff/config.lua" ] || fail "moved prefix: $out"
mv "$tmp/moved" "$prefix"
echo "ok    a moved prefix still finds its Lua files"

if command -v lua5.4 >/dev/null 2>&1; then
  LUA_PATH="$luadir/?.lua;$luadir/?/init.lua" LUA_CPATH="$cdir/?.so" lua5.4 - "$so" <<'LUA' || fail "lua5.4 with the installed paths"
local so = ...
assert(package.searchpath("advdiff.core", package.cpath) == so)
local ad = require "advdiff"
assert(ad.zeros(4):numel() == 4)
assert(next(require("advdiff.config").overrides) == nil)
LUA
  echo "ok    lua5.4 requires advdiff from the installed paths"
else
  echo "skip  lua5.4 from the installed paths: no lua5.4"
fi

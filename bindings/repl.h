/* repl.h: what the two files of the advdiff executable share. main.c parses
 * the command line and runs scripts; repl.c is the interactive loop. */
#ifndef AD_REPL_H
#define AD_REPL_H

#include <lua.h>

#ifndef ADVDIFF_VERSION
#define ADVDIFF_VERSION "0.1.0"
#endif

/* lua_pcall of the function under narg arguments, with a traceback message
 * handler and a SIGINT handler that stops the running Lua code with the
 * error "interrupted!" (lua.c's laction/lstop). */
int l_cli_docall(lua_State *L, int narg, int nres);

/* [-(0|1), +0, -] when status is not LUA_OK, print the message on the stack
 * top to stderr ("progname: msg", or just "msg" when progname is NULL) and
 * pop it. Returns status. */
int l_cli_report(lua_State *L, int status, const char *progname);

/* Set the global `ad = require "advdiff"` unless `ad` is already set.
 * A failure is reported on stderr and returned; nothing is raised. */
int l_cli_require_ad(lua_State *L);

/* Read-eval-print loop on stdin until end of input (Ctrl-D). On a terminal:
 * readline, history, completion, a banner; otherwise plain lines and no
 * prompts. Returns the number of chunks that failed when stdin is not a
 * terminal (so piped sessions can report failure), 0 on a terminal. */
int l_repl(lua_State *L);

#endif

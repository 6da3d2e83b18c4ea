/* main.c: the advdiff executable, a lua(1) with advdiff built in.
 *
 *   advdiff [options] [script [args]]
 *
 * Options, `arg` and the script's `...` follow lua.c 5.4 exactly (arg[0] is
 * the script, arg[1..] its arguments, interpreter options at negative
 * indices), so a script behaves the same under `advdiff` and `lua5.4`. Added:
 * `--set key=value` config overrides (see usage below for where they may
 * appear), `--help`, and a REPL with completion and history when no script is
 * given (repl.c).
 *
 * The advdiff.core C module is linked into the executable and registered in
 * package.preload, so no LUA_CPATH is needed; the Lua half (lua/advdiff) is
 * found through package.path, which gets, in front of Lua's default:
 *   1. $ADVDIFF_LUA_PATH, when set;
 *   2. for an installed advdiff (the lua dir exists next to the executable,
 *      at ADVDIFF_LUA_DIR_FROM_BIN from its bin dir): that dir. Otherwise the
 *      source tree's lua dir when it still exists, then the configured
 *      install dir. An installed advdiff thus never picks up the Lua files of
 *      a source tree its C half may no longer match, and an installed prefix
 *      can be moved. */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE /* sigaction, readlink, realpath */
#endif
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "repl.h"

int luaopen_advdiff_core(lua_State *L);

static const char *progname = "advdiff";
static lua_State *globalL;

/* ---- running chunks (lua.c's docall, report, msghandler) ------------------ */

static void set_sigint(void (*handler)(int), struct sigaction *old) {
  struct sigaction sa;
  sa.sa_handler = handler;
  sa.sa_flags = 0;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, old);
}

static void lstop(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

/* A signal handler may not touch the Lua state beyond lua_sethook (which is
 * safe from a handler); the hook raises the error at the next Lua step. A
 * second Ctrl-C while C code runs (a long kernel) gets the default action. */
static void laction(int sig) {
  int flag = LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT;
  (void)sig;
  set_sigint(SIG_DFL, NULL);
  lua_sethook(globalL, lstop, flag, 1);
}

static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int l_cli_docall(lua_State *L, int narg, int nres) {
  struct sigaction old;
  int status, base = lua_gettop(L) - narg;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  globalL = L;
  set_sigint(laction, &old);
  status = lua_pcall(L, narg, nres, base);
  sigaction(SIGINT, &old, NULL);
  /* a Ctrl-C that landed as the call returned must not stop the next chunk */
  lua_sethook(L, NULL, 0, 0);
  lua_remove(L, base);
  return status;
}

int l_cli_report(lua_State *L, int status, const char *pname) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    fflush(stdout);  /* keep stdout and stderr in order when both are piped */
    if (pname) fprintf(stderr, "%s: ", pname);
    fprintf(stderr, "%s\n", msg ? msg : "(error object is not a string)");
    fflush(stderr);
    lua_pop(L, 1);
  }
  return status;
}

static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) status = l_cli_docall(L, 0, 0);
  return l_cli_report(L, status, progname);
}

static int dostring(lua_State *L, const char *s, const char *name) {
  return dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

int l_cli_require_ad(lua_State *L) {
  int status;
  if (lua_getglobal(L, "ad") != LUA_TNIL) {
    lua_pop(L, 1);
    return LUA_OK;
  }
  lua_pop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "advdiff");
  status = l_cli_docall(L, 1, 1);
  if (status == LUA_OK) lua_setglobal(L, "ad");
  return l_cli_report(L, status, progname);
}

/* ---- command line ---------------------------------------------------------- */

static void print_usage(FILE *f) {
  fprintf(f,
          "usage: %s [options] [script [args]]\n"
          "Runs a Lua 5.4 script with advdiff built in; with no script, starts a REPL\n"
          "(where `ad` is loaded).\n"
          "Options:\n"
          "  -e stat          execute string 'stat' (`ad` is loaded)\n"
          "  -i               enter the REPL after running 'script'\n"
          "  -l mod           require library 'mod' into global 'mod'\n"
          "  -l g=mod         require library 'mod' into global 'g'\n"
          "  -v, --version    show version information\n"
          "  -E               ignore environment variables (LUA_*, ADVDIFF_LUA_PATH)\n"
          "  -W               turn warnings on\n"
          "  --set key=value  override a config key (ad.config); repeatable\n"
          "  -h, --help       show this help\n"
          "  --               stop handling options\n"
          "  -                stop handling options and execute stdin\n"
          "--set may be given before the script name or among the script's arguments,\n"
          "where it is taken out of `arg` and `...`; a `--` among the script's\n"
          "arguments ends that, and it and everything after it go to the script.\n"
          "Keys may be dotted (opt.lr=1e-4); values take the type of the default.\n"
          "Environment: ADVDIFF_LUA_PATH (Lua path templates with '?', or directories\n"
          "separated by ':' or ';') is searched before everything else.\n",
          progname);
}

static void print_version(void) {
  printf("advdiff %s (%s)\n", ADVDIFF_VERSION, LUA_RELEASE);
  fflush(stdout);
}

#define HAS_ERROR 1
#define HAS_I 2
#define HAS_V 4
#define HAS_E 8
#define HAS_NOENV 16
#define HAS_HELP 32

static int is_set_pair(const char *s) {
  const char *eq = s ? strchr(s, '=') : NULL;
  return eq != NULL && eq != s;
}

/* lua.c's collectargs plus --set/--help/--version. Returns the option mask
 * (HAS_ERROR alone on a bad option, *first then indexes it); *first is the
 * script's index, or 0 when there is none. */
static int collectargs(char **argv, int *first) {
  int args = 0, i;
  if (argv[0] != NULL && argv[0][0]) { /* messages say "advdiff: ...", not the path it was run by */
    const char *slash = strrchr(argv[0], '/');
    progname = slash && slash[1] ? slash + 1 : argv[0];
  }
  *first = 0;
  if (argv[0] == NULL) return 0;
  for (i = 1; argv[i] != NULL; i++) {
    *first = i;
    if (argv[i][0] != '-') return args;
    switch (argv[i][1]) {
      case '-':
        if (argv[i][2] == '\0') {
          *first = argv[i + 1] ? i + 1 : 0;
          return args;
        }
        if (strcmp(argv[i], "--help") == 0) args |= HAS_HELP;
        else if (strcmp(argv[i], "--version") == 0) args |= HAS_V;
        else if (strcmp(argv[i], "--set") == 0) {
          if (!is_set_pair(argv[i + 1])) return HAS_ERROR;
          i++;
        } else if (strncmp(argv[i], "--set=", 6) == 0) {
          if (!is_set_pair(argv[i] + 6)) return HAS_ERROR;
        } else
          return HAS_ERROR;
        break;
      case '\0': return args; /* '-': the script is stdin */
      case 'E':
      case 'W':
      case 'h':
      case 'i':
      case 'v':
        if (argv[i][2] != '\0') return HAS_ERROR;
        if (argv[i][1] == 'E') args |= HAS_NOENV;
        if (argv[i][1] == 'h') args |= HAS_HELP;
        if (argv[i][1] == 'i') args |= HAS_I; /* the REPL prints its own banner */
        if (argv[i][1] == 'v') args |= HAS_V;
        break;
      case 'e':
      case 'l': /* both need an argument */
        if (argv[i][1] == 'e') args |= HAS_E;
        if (argv[i][2] == '\0') {
          i++;
          if (argv[i] == NULL || argv[i][0] == '-') return HAS_ERROR;
        }
        break;
      default: return HAS_ERROR;
    }
  }
  *first = 0;
  return args;
}

static void print_bad_option(const char *opt, const char *next) {
  fprintf(stderr, "%s: ", progname);
  if ((opt[1] == 'e' || opt[1] == 'l') && opt[2] == '\0')
    fprintf(stderr, "'%s' needs an argument\n", opt);
  else if (strcmp(opt, "--set") == 0)
    fprintf(stderr, "'--set' needs key=value, got %s%s%s\n", next ? "'" : "", next ? next : "nothing",
            next ? "'" : "");
  else if (strncmp(opt, "--set=", 6) == 0)
    fprintf(stderr, "'--set' needs key=value, got '%s'\n", opt + 6);
  else
    fprintf(stderr, "unrecognized option '%s'\n", opt);
  fprintf(stderr, "Try '%s --help' for more information.\n", progname);
}

/* [-0, +0, m] record one --set pair into the table at t (later pairs win) */
static void add_override(lua_State *L, int t, const char *pair) {
  const char *eq = strchr(pair, '=');
  lua_pushlstring(L, pair, (size_t)(eq - pair));
  lua_pushstring(L, eq + 1);
  lua_settable(L, t);
}

/* Builds the --set table and removes the pairs that follow the script name
 * from argv (they are the executable's, not the script's). Returns the new
 * argc, or -1 with *bad set on a malformed pair. Leaves the table on the
 * stack. */
static int take_overrides(lua_State *L, int argc, char **argv, int script, int *bad) {
  int i, w, t, stop = 0, optlim = script > 0 ? script : argc;
  lua_newtable(L);
  t = lua_gettop(L);
  for (i = 1; i < optlim; i++) {
    if (strcmp(argv[i], "--set") == 0) add_override(L, t, argv[++i]);
    else if (strncmp(argv[i], "--set=", 6) == 0) add_override(L, t, argv[i] + 6);
    else if ((argv[i][1] == 'e' || argv[i][1] == 'l') && argv[i][2] == '\0') i++; /* skip its value */
  }
  if (script <= 0) return argc;
  for (i = w = script + 1; i < argc; i++) {
    if (!stop && strcmp(argv[i], "--") == 0) stop = 1;
    else if (!stop && strcmp(argv[i], "--set") == 0) {
      if (!is_set_pair(argv[i + 1])) {
        *bad = i;
        return -1;
      }
      add_override(L, t, argv[++i]);
      continue;
    } else if (!stop && strncmp(argv[i], "--set=", 6) == 0) {
      if (!is_set_pair(argv[i] + 6)) {
        *bad = i;
        return -1;
      }
      add_override(L, t, argv[i] + 6);
      continue;
    }
    argv[w++] = argv[i];
  }
  argv[w] = NULL;
  return w;
}

static void createargtable(lua_State *L, char **argv, int argc, int script) {
  int i;
  lua_createtable(L, argc - (script + 1), script + 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

/* ---- package.path / preload ----------------------------------------------- */

static int dir_has(const char *dir, const char *rel) {
  char path[4096];
  if (snprintf(path, sizeof path, "%s/%s", dir, rel) >= (int)sizeof path) return 0;
  return access(path, R_OK) == 0;
}

static void add_dir(luaL_Buffer *b, const char *dir) {
  luaL_addstring(b, dir);
  luaL_addstring(b, "/?.lua;");
  luaL_addstring(b, dir);
  luaL_addstring(b, "/?/init.lua;");
}

/* $ADVDIFF_LUA_PATH: templates (with '?') used as they are, else directories */
static void add_env_path(luaL_Buffer *b, const char *env) {
  if (strchr(env, '?')) {
    luaL_addstring(b, env);
    if (env[strlen(env) - 1] != ';') luaL_addchar(b, ';');
    return;
  }
  while (*env) {
    size_t n = strcspn(env, ":;");
    if (n > 0) {
      luaL_addlstring(b, env, n);
      luaL_addstring(b, "/?.lua;");
      luaL_addlstring(b, env, n);
      luaL_addstring(b, "/?/init.lua;");
    }
    env += n;
    if (*env) env++;
  }
}

/* the lua dir of an installed advdiff, found from the executable's own path */
static int installed_lua_dir(char *out, size_t size) {
#ifdef ADVDIFF_LUA_DIR_FROM_BIN
  char exe[PATH_MAX], dir[PATH_MAX + 64], real[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  char *slash;
  if (n <= 0) return 0;
  exe[n] = '\0';
  slash = strrchr(exe, '/');
  if (slash == NULL) return 0;
  *slash = '\0';
  if (snprintf(dir, sizeof dir, "%s/%s", exe, ADVDIFF_LUA_DIR_FROM_BIN) >= (int)sizeof dir) return 0;
  /* "<prefix>/share/lua/5.4", not "<prefix>/bin/../share/lua/5.4", in paths and messages */
  if (realpath(dir, real) == NULL || strlen(real) >= size) return 0;
  strcpy(out, real);
  return dir_has(out, "advdiff/init.lua");
#else
  (void)out;
  (void)size;
  return 0;
#endif
}

static void set_paths(lua_State *L, int noenv) {
  luaL_Buffer b;
  char dir[4096];
  const char *env = noenv ? NULL : getenv("ADVDIFF_LUA_PATH");
  int pkg;
  lua_getglobal(L, "package");
  pkg = lua_gettop(L);
  luaL_buffinit(L, &b); /* from here the stack belongs to the buffer */
  if (env && *env) add_env_path(&b, env);
  if (installed_lua_dir(dir, sizeof dir)) {
    add_dir(&b, dir);
  } else {
#ifdef ADVDIFF_SOURCE_LUA_DIR
    if (dir_has(ADVDIFF_SOURCE_LUA_DIR, ".")) add_dir(&b, ADVDIFF_SOURCE_LUA_DIR);
#endif
#ifdef ADVDIFF_INSTALL_LUA_DIR
    add_dir(&b, ADVDIFF_INSTALL_LUA_DIR);
#endif
  }
  lua_getfield(L, pkg, "path");
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  lua_setfield(L, pkg, "path");
  lua_pop(L, 1);
}

static void preload_core(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_advdiff_core);
  lua_setfield(L, -2, "advdiff.core");
  lua_pop(L, 1);
}

static int handle_luainit(lua_State *L) {
  const char *name = "=LUA_INIT_5_4";
  const char *init = getenv(name + 1);
  if (init == NULL) {
    name = "=LUA_INIT";
    init = getenv(name + 1);
  }
  if (init == NULL) return LUA_OK;
  if (init[0] == '@') return dochunk(L, luaL_loadfile(L, init + 1));
  return dostring(L, init, name);
}

/* -e, -l and -W, in order */
static int runargs(lua_State *L, char **argv, int n) {
  int i;
  for (i = 1; i < n; i++) {
    int option = argv[i][1];
    if (option == 'e' || option == 'l') {
      int status;
      char *extra = argv[i] + 2;
      if (*extra == '\0') extra = argv[++i];
      if (option == 'e') {
        status = dostring(L, extra, "=(command line)");
      } else {
        char *mod = strchr(extra, '=');
        char *glob = extra;
        if (mod) *mod++ = '\0';
        else mod = extra;
        lua_getglobal(L, "require");
        lua_pushstring(L, mod);
        status = l_cli_docall(L, 1, 1);
        if (status == LUA_OK) lua_setglobal(L, glob);
        l_cli_report(L, status, progname);
      }
      if (status != LUA_OK) return 0;
    } else if (option == 'W') {
      lua_warning(L, "@on", 0);
    } else if (strcmp(argv[i], "--set") == 0) {
      i++;
    }
  }
  return 1;
}

static int pushargs(lua_State *L) {
  int i, n;
  if (lua_getglobal(L, "arg") != LUA_TTABLE) luaL_error(L, "'arg' is not a table");
  n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -i);
  return n;
}

static int handle_script(lua_State *L, char **argv) {
  int status;
  const char *fname = argv[0];
  if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0) fname = NULL; /* stdin */
  /* [sweep, issue 9] `advdiff sweep FILE ...` runs the built-in sweep command
   * (lua/advdiff/sweep/cli.lua) unless a script file named "sweep" exists */
  if (fname && strcmp(fname, "sweep") == 0 && access(fname, F_OK) != 0)
    status = luaL_loadstring(L, "return require('advdiff.sweep.cli').main(...)");
  else
    status = luaL_loadfile(L, fname);
  if (status == LUA_OK) {
    int n = pushargs(L);
    status = l_cli_docall(L, n, LUA_MULTRET);
  }
  return l_cli_report(L, status, progname);
}

static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = (char **)lua_touserdata(L, 2);
  int script, bad = 0;
  int args = collectargs(argv, &script);
  int optlim = (script > 0) ? script : argc;
  luaL_checkversion(L);
  if (args == HAS_ERROR) {
    print_bad_option(argv[script], argv[script] ? argv[script + 1] : NULL);
    return 0;
  }
  if (args & HAS_HELP) {
    print_usage(stdout);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (args & HAS_V) print_version();
  if (args & HAS_NOENV) {
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
  luaL_openlibs(L);
  preload_core(L);
  set_paths(L, args & HAS_NOENV);
  /* the overrides, for advdiff.config; set before any Lua code runs */
  argc = take_overrides(L, argc, argv, script, &bad);
  if (argc < 0) {
    print_bad_option(argv[bad], argv[bad + 1]);
    return 0;
  }
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_insert(L, -2);
  lua_setfield(L, -2, "advdiff.config.cli");
  lua_pop(L, 1);
  createargtable(L, argv, argc, script);
  lua_gc(L, LUA_GCRESTART);
  lua_gc(L, LUA_GCGEN, 0, 0);
  if (!(args & HAS_NOENV) && handle_luainit(L) != LUA_OK) return 0;
  if (args & HAS_E) l_cli_require_ad(L); /* a failure is reported; -e code may not need it */
  if (!runargs(L, argv, optlim)) return 0;
  if (script > 0 && handle_script(L, argv + script) != LUA_OK) return 0;
  if ((args & HAS_I) || (script < 1 && !(args & (HAS_E | HAS_V)))) {
    if (l_repl(L) > 0) return 0;
  }
  lua_pushboolean(L, 1);
  return 1;
}

int main(int argc, char **argv) {
  int status, result;
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "%s: cannot create state: not enough memory\n", argv[0] ? argv[0] : progname);
    return EXIT_FAILURE;
  }
  lua_gc(L, LUA_GCSTOP);
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  status = lua_pcall(L, 2, 1, 0);
  result = lua_toboolean(L, -1);
  l_cli_report(L, status, progname);
  lua_close(L);
  return (result && status == LUA_OK) ? EXIT_SUCCESS : EXIT_FAILURE;
}

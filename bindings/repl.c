/* repl.c: the advdiff read-eval-print loop (`advdiff` alone, or `advdiff -i`).
 *
 * It behaves like lua.c 5.4's: a line is first tried as `return <line>` and
 * the results are printed with the global print (so tensors show through
 * their __tostring); a chunk that ends in "<eof>" is incomplete and more
 * lines are read with the ">> " prompt. On a terminal it adds GNU readline
 * with history in ~/.advdiff_history and tab completion of globals, of
 * fields along `a.b.c` chains, and of methods after `:` (tensor methods are
 * read from the `__methods` table of the tensor metatable, whose __index is a
 * function). Ctrl-C stops a running statement (the lua.c hook, main.c's
 * l_cli_docall) and, at the prompt, discards the line being typed. When
 * stdin is not a terminal, lines are read plainly with no prompt, so
 * `printf '1+1\n' | advdiff` prints 2.
 *
 * Readline is driven through its callback interface with our own SIGINT
 * handler: readline's blocking readline() restarts its read after a signal,
 * which would leave Ctrl-C at the prompt no way to clear the line. */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE /* sigaction, pselect, getline */
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include <lauxlib.h>
#include <lua.h>

#include "repl.h"

#define PROMPT1 "> "
#define PROMPT2 ">> "
#define HISTORY_FILE ".advdiff_history"
#define HISTORY_MAX 1000

enum { LINE_OK, LINE_EOF, LINE_INTR };

typedef struct {
  int tty;
  char *history;  /* file to append entries to; NULL when there is none */
  char *line;     /* the last line read, owned here so a Lua error cannot leak it */
} repl_input;

static lua_State *replL; /* for the completion callback */
static volatile sig_atomic_t got_sigint, got_winch;

/* ---- history ------------------------------------------------------------- */

static void history_open(repl_input *in) {
  const char *home = getenv("HOME");
  size_t n;
  int fd;
  using_history();
  stifle_history(HISTORY_MAX);
  if (home == NULL || home[0] == '\0') return;
  n = strlen(home) + sizeof HISTORY_FILE + 2;
  in->history = malloc(n);
  if (in->history == NULL) return;
  snprintf(in->history, n, "%s/%s", home, HISTORY_FILE);
  read_history(in->history);
  /* append_history needs the file to exist; an unwritable HOME just means no
   * history is kept */
  fd = open(in->history, O_WRONLY | O_CREAT | O_APPEND, 0600);
  if (fd < 0) {
    free(in->history);
    in->history = NULL;
    return;
  }
  close(fd);
  history_truncate_file(in->history, HISTORY_MAX);
}

static void history_add(repl_input *in, const char *entry) {
  HIST_ENTRY *last;
  if (!in->tty || entry[0] == '\0') return;
  last = history_length > 0 ? history_get(history_base + history_length - 1) : NULL;
  if (last && strcmp(last->line, entry) == 0) return;
  add_history(entry);
  /* written at once, so a crash or a kill keeps the session's history */
  if (in->history && append_history(1, in->history) != 0) {
    free(in->history);
    in->history = NULL;
  }
}

/* ---- completion ---------------------------------------------------------- */

/* Loaded once with the globals table as `...`; returns the function that
 * maps the word under the cursor to its sorted completions (full words). The
 * standard functions are captured at load so a session that reassigns
 * `table` or `string` keeps completion working. */
static const char COMPLETER[] =
    "local G = ...\n"
    "local pcall, next, type, getmetatable, rawget = pcall, next, type, getmetatable, rawget\n"
    "local sort, find, sub, match, gmatch = table.sort, string.find, string.sub, string.match, string.gmatch\n"
    "local KEYWORDS = { 'and', 'break', 'do', 'else', 'elseif', 'end', 'false', 'for', 'function',\n"
    "  'goto', 'if', 'in', 'local', 'nil', 'not', 'or', 'repeat', 'return', 'then', 'true', 'until', 'while' }\n"
    "local function get(v, k)\n"
    "  if type(v) == 'table' then local r = rawget(v, k); if r ~= nil then return r end end\n"
    "  local ok, r = pcall(function() return v[k] end)\n"
    "  if ok then return r end\n"
    "end\n"
    /* fields of v, of its metatable's __methods table, and along __index tables */
    "local function collect(v, out, seen)\n"
    "  if seen[v] then return end\n"
    "  seen[v] = true\n"
    "  if type(v) == 'table' then for k in next, v do if type(k) == 'string' then out[k] = true end end end\n"
    "  local mt = getmetatable(v)\n"
    "  if type(mt) == 'table' then\n"
    "    local m = rawget(mt, '__methods'); if type(m) == 'table' then collect(m, out, seen) end\n"
    "    local ix = rawget(mt, '__index'); if type(ix) == 'table' then collect(ix, out, seen) end\n"
    "  end\n"
    "end\n"
    "local function wanted(k, part)\n"
    "  return match(k, '^[%a_][%w_]*$') and sub(k, 1, #part) == part\n"
    "     and (sub(k, 1, 1) ~= '_' or sub(part, 1, 1) == '_')\n"
    "end\n"
    "return function(text)\n"
    "  local out, names = {}, {}\n"
    "  local head, sep, part = match(text, '^(.*)([.:])([%w_]*)$')\n"
    "  if head then\n"
    "    local v = G\n"
    "    for name in gmatch(head .. '.', '(.-)%.') do\n"
    "      if not match(name, '^[%a_][%w_]*$') then return out end\n"
    "      v = get(v, name)\n"
    "      if v == nil then return out end\n"
    "    end\n"
    "    collect(v, names, {})\n"
    "    for k in next, names do\n"
    "      if wanted(k, part) and (sep == '.' or type(get(v, k)) == 'function') then\n"
    "        out[#out + 1] = head .. sep .. k\n"
    "      end\n"
    "    end\n"
    "  elseif match(text, '^[%w_]*$') then\n"
    "    collect(G, names, {})\n"
    "    for _, kw in next, KEYWORDS do names[kw] = true end\n"
    "    for k in next, names do if wanted(k, text) then out[#out + 1] = k end end\n"
    "  end\n"
    "  sort(out)\n"
    "  return out\n"
    "end\n";

static const char completer_key = 0; /* registry key (its address) */

static char **matches;
static size_t n_matches, next_match;

static void free_matches(void) {
  for (size_t i = 0; i < n_matches; i++) free(matches[i]);
  free(matches);
  matches = NULL;
  n_matches = 0;
}

/* [-0, +1, e] completer(text): run protected, so a failure (even out of
 * memory) stays inside Lua instead of unwinding through readline */
static int completions(lua_State *L) {
  const char *text = lua_touserdata(L, 1);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &completer_key) != LUA_TFUNCTION) {
    lua_pop(L, 1);
    if (luaL_loadbuffer(L, COMPLETER, sizeof COMPLETER - 1, "=completer") != LUA_OK) return lua_error(L);
    lua_pushglobaltable(L);
    lua_call(L, 1, 1);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &completer_key);
  }
  lua_pushstring(L, text);
  lua_call(L, 1, 1);
  return 1;
}

static void compute_matches(const char *text) {
  lua_State *L = replL;
  int top = lua_gettop(L);
  free_matches();
  lua_pushcfunction(L, completions);
  lua_pushlightuserdata(L, (void *)text);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TTABLE) {
    size_t n = lua_rawlen(L, -1);
    matches = calloc(n ? n : 1, sizeof *matches);
    for (size_t i = 1; matches && i <= n; i++) {
      if (lua_rawgeti(L, -1, (lua_Integer)i) == LUA_TSTRING) {
        char *s = strdup(lua_tostring(L, -1));
        if (s) matches[n_matches++] = s;
      }
      lua_pop(L, 1);
    }
  }
  lua_settop(L, top);
}

static char *match_generator(const char *text, int state) {
  if (state == 0) {
    compute_matches(text);
    next_match = 0;
  }
  return next_match < n_matches ? strdup(matches[next_match++]) : NULL;
}

static char **complete(const char *text, int start, int end) {
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1; /* never fall back to file names */
  rl_completion_suppress_append = 1;
  return rl_completion_matches(text, match_generator);
}

/* ---- reading lines ------------------------------------------------------- */

static char *cb_line;
static int cb_done;

static void on_line(char *line) {
  cb_line = line;
  cb_done = 1;
  rl_callback_handler_remove();
}

static void on_sigint(int sig) {
  (void)sig;
  got_sigint = 1;
}

static void on_winch(int sig) {
  (void)sig;
  got_winch = 1;
}

/* ---- idle work (advdiff.train: run:start() trains between keystrokes) ---
 * [edit by the trainer engineer, issue 7] While the prompt waits for a key,
 * the Lua function ad._repl_idle (if the advdiff module defines it) is called
 * repeatedly; it returns (again, message): `again` false stops the calls
 * until the next line is read, and a message is printed above the prompt,
 * which is then redrawn with the line being typed. Errors are printed and
 * stop the calls for this line. */
static int idle_call(lua_State *L, int *again) {
  int top = lua_gettop(L), status;
  *again = 0;
  if (lua_getglobal(L, "package") != LUA_TTABLE || lua_getfield(L, -1, "loaded") != LUA_TTABLE ||
      lua_getfield(L, -1, "advdiff") != LUA_TTABLE || lua_getfield(L, -1, "_repl_idle") != LUA_TFUNCTION) {
    lua_settop(L, top);
    return 0;
  }
  status = lua_pcall(L, 0, 2, 0);
  if (status != LUA_OK) {
    rl_clear_visible_line();
    fprintf(stderr, "idle task: %s\n", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error object)");
    fflush(stderr);
    rl_forced_update_display();
  } else {
    *again = lua_toboolean(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING) {
      rl_clear_visible_line();
      fprintf(rl_outstream, "%s\n", lua_tostring(L, -1));
      fflush(rl_outstream);
      rl_forced_update_display();
    }
  }
  lua_settop(L, top);
  return 1;
}

/* One line from the terminal. SIGINT and SIGWINCH stay blocked except inside
 * pselect, so a signal is never lost between the check and the wait. */
static int read_tty(const char *prompt, char **out) {
  struct sigaction sa, old_int, old_winch;
  sigset_t block, orig;
  int fd = fileno(rl_instream), result = LINE_OK;
  sa.sa_flags = 0;
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = on_sigint;
  sigaction(SIGINT, &sa, &old_int);
  sa.sa_handler = on_winch;
  sigaction(SIGWINCH, &sa, &old_winch);
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGWINCH);
  sigprocmask(SIG_BLOCK, &block, &orig);
  got_sigint = got_winch = 0;
  rl_reset_screen_size(); /* the window may have changed while Lua code ran */
  cb_done = 0;
  cb_line = NULL;
  rl_callback_handler_install(prompt, on_line);
  int idle = replL != NULL; /* idle work (see idle_call) until it says it is done */
  while (!cb_done) {
    fd_set fds;
    int r;
    const struct timespec poll_ts = {0, 10 * 1000 * 1000};
    FD_ZERO(&fds);
    FD_SET(fd, &fds);
    r = pselect(fd + 1, &fds, NULL, NULL, idle ? &poll_ts : NULL, &orig);
    if (r == 0) {
      if (!idle_call(replL, &idle)) idle = 0;
      continue;
    }
    if (got_winch) {
      got_winch = 0;
      rl_resize_terminal();
    }
    if (got_sigint) {
      got_sigint = 0;
      rl_echo_signal_char(SIGINT);
      rl_replace_line("", 0);
      rl_free_line_state();
      rl_callback_sigcleanup();
      rl_callback_handler_remove();
      fputc('\n', rl_outstream);
      fflush(rl_outstream);
      result = LINE_INTR;
      break;
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      rl_callback_handler_remove();
      result = LINE_EOF;
      break;
    }
    rl_callback_read_char();
  }
  sigprocmask(SIG_SETMASK, &orig, NULL);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGWINCH, &old_winch, NULL);
  if (result == LINE_OK) {
    if (cb_line == NULL) return LINE_EOF;
    *out = cb_line;
  }
  return result;
}

static int read_plain(char **out) {
  char *line = NULL;
  size_t cap = 0;
  ssize_t n = getline(&line, &cap, stdin);
  if (n < 0) {
    free(line);
    return LINE_EOF;
  }
  while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
  *out = line;
  return LINE_OK;
}

/* [-0, +0|1, e] read a line and push it; _PROMPT/_PROMPT2 as in lua.c */
static int pushline(lua_State *L, repl_input *in, int firstline) {
  int k;
  free(in->line);
  in->line = NULL;
  if (in->tty) {
    int top = lua_gettop(L);
    const char *prompt = firstline ? PROMPT1 : PROMPT2;
    if (lua_getglobal(L, firstline ? "_PROMPT" : "_PROMPT2") != LUA_TNIL) prompt = luaL_tolstring(L, -1, NULL);
    k = read_tty(prompt, &in->line); /* the prompt stays anchored on the stack meanwhile */
    lua_settop(L, top);
  } else {
    k = read_plain(&in->line);
  }
  if (k != LINE_OK) return k;
  if (firstline && in->line[0] == '=') lua_pushfstring(L, "return %s", in->line + 1); /* 5.2 style */
  else lua_pushstring(L, in->line);
  return LINE_OK;
}

#define EOFMARK "<eof>"
#define MARKLEN (sizeof EOFMARK - 1)

static int incomplete(lua_State *L, int status) {
  if (status == LUA_ERRSYNTAX) {
    size_t n;
    const char *msg = lua_tolstring(L, -1, &n);
    if (n >= MARKLEN && strcmp(msg + n - MARKLEN, EOFMARK) == 0) {
      lua_pop(L, 1);
      return 1;
    }
  }
  return 0;
}

/* [-0, +0, m] the line on the stack top, compiled as `return <line>;`: on
 * success it is replaced by the chunk */
static int addreturn(lua_State *L, repl_input *in) {
  const char *line = lua_tostring(L, -1);
  const char *retline = lua_pushfstring(L, "return %s;", line);
  int status = luaL_loadbuffer(L, retline, strlen(retline), "=stdin");
  if (status == LUA_OK) {
    lua_remove(L, -2);
    history_add(in, line);
  } else {
    lua_pop(L, 2);
  }
  return status;
}

/* statement, continued on more lines while it is incomplete; -2 when a
 * continuation line was interrupted (the chunk is dropped) */
static int multiline(lua_State *L, repl_input *in) {
  for (;;) {
    size_t len;
    const char *line = lua_tolstring(L, 1, &len);
    int status = luaL_loadbuffer(L, line, len, "=stdin");
    int k;
    if (!incomplete(L, status)) {
      history_add(in, line);
      return status;
    }
    k = pushline(L, in, 0);
    if (k != LINE_OK) {
      history_add(in, line);
      if (k == LINE_INTR) return -2;
      return luaL_loadbuffer(L, line, len, "=stdin"); /* EOF: report the syntax error */
    }
    lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
}

/* -1 at end of input, -2 after Ctrl-C, else the load status with the chunk
 * (or the error message) alone on the stack */
static int loadline(lua_State *L, repl_input *in) {
  int status, k;
  lua_settop(L, 0);
  k = pushline(L, in, 1);
  if (k != LINE_OK) return k == LINE_EOF ? -1 : -2;
  if ((status = addreturn(L, in)) != LUA_OK) status = multiline(L, in);
  if (status == -2) {
    lua_settop(L, 0);
    return -2;
  }
  lua_remove(L, 1);
  return status;
}

static void l_print(lua_State *L) {
  int n = lua_gettop(L);
  if (n > 0) {
    luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
    lua_getglobal(L, "print");
    lua_insert(L, 1);
    if (lua_pcall(L, n, 0, 0) != LUA_OK) {
      lua_pushfstring(L, "error calling 'print' (%s)", lua_tostring(L, -1));
      l_cli_report(L, LUA_ERRRUN, NULL);
      lua_pop(L, 1);
    }
  }
  fflush(stdout);
}

/* ---- the loop ------------------------------------------------------------ */

static void setup_readline(repl_input *in) {
  static char word_break[] = " \t\n\"\\'`@$><=;|&{}()[],+-*/%^~#";
  rl_readline_name = "advdiff";
  rl_instream = stdin; /* readline sets these only on its first line; read_tty needs them before */
  rl_outstream = stdout;
  rl_catch_signals = 0; /* read_tty handles SIGINT itself */
  rl_catch_sigwinch = 0;
  rl_basic_word_break_characters = word_break; /* not '.' or ':': `a.b.c` is one word */
  rl_completer_word_break_characters = word_break;
  rl_attempted_completion_function = complete;
  history_open(in);
}

int l_repl(lua_State *L) {
  repl_input in = { isatty(STDIN_FILENO), NULL, NULL };
  int status, failures = 0;
  replL = L;
  if (in.tty) {
    setup_readline(&in);
    printf("advdiff %s (%s)  `ad` is loaded; Tab completes, Ctrl-C interrupts, Ctrl-D exits\n",
           ADVDIFF_VERSION, LUA_RELEASE);
    fflush(stdout);
  }
  if (l_cli_require_ad(L) != LUA_OK) failures++;
  while ((status = loadline(L, &in)) != -1) {
    if (status == -2) continue;
    if (status == LUA_OK) status = l_cli_docall(L, 0, LUA_MULTRET);
    if (status == LUA_OK) {
      l_print(L);
    } else {
      l_cli_report(L, status, NULL);
      failures++;
    }
  }
  lua_settop(L, 0);
  if (in.tty) {
    fputc('\n', stdout);
    fflush(stdout);
  }
  free(in.line);
  free(in.history);
  free_matches();
  replL = NULL;
  return in.tty ? 0 : failures;
}

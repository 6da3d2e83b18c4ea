/* l_proc.c: child processes and signals for advdiff's own tools.
 *
 * ad.sweep runs each configuration as a separate `advdiff` process and needs
 * what io.popen cannot give: the child's pid (to wait on several at once and to
 * stop them), its exit status, and the guarantee that a run does not outlive
 * the sweep that started it (a killed sweep must not leave orphans writing
 * into run folders that the resumed sweep reruns). The Jupyter driver
 * (advdiff.jupyter) needs a SIGINT handler that interrupts the running cell
 * and stays installed for the next one. Module functions (underscored: not
 * part of the user API):
 *
 *   _proc_spawn(argv, {stdout=path, stderr=path|"stdout", cwd=dir}) -> pid
 *   _proc_wait(pid [, block]) -> nil (still running) | "exit", code | "signal", sig
 *   _proc_kill(pid [, sig=15])   _proc_sleep(seconds)   _proc_ncpu()   _proc_getpid()
 *   _proc_exe() -> path of the running executable (nil where /proc is absent)
 *   _proc_on_sigint()            SIGINT raises "interrupted!" at the next Lua step
 *   _proc_sigint_arm(on)         while off, SIGINT is ignored (after _proc_on_sigint) */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "lutil.h"

#define MAX_ARGS 4096

/* Everything the child needs is prepared before fork, so that between fork
 * and exec the child only makes async-signal-safe calls. */
static int proc_spawn(lua_State *L) {
  const char *argv[MAX_ARGS + 1];
  const char *out_path = NULL, *err_path = NULL, *cwd = NULL;
  int err_to_out = 0, n, i, errpipe[2];
  pid_t pid, parent = getpid();
  luaL_checktype(L, 1, LUA_TTABLE);
  n = (int)luaL_len(L, 1);
  if (n < 1) return luaL_error(L, "_proc_spawn: argv must have at least the program name");
  if (n > MAX_ARGS) return luaL_error(L, "_proc_spawn: at most %d arguments, got %d", MAX_ARGS, n);
  for (i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    if (!lua_isstring(L, -1)) return luaL_error(L, "_proc_spawn: argv[%d] must be a string", i + 1);
    argv[i] = lua_tostring(L, -1); /* kept alive: the strings stay on the stack */
  }
  argv[n] = NULL;
  if (lua_type(L, 2) == LUA_TTABLE) {
    if (lua_getfield(L, 2, "stdout") == LUA_TSTRING) out_path = lua_tostring(L, -1);
    if (lua_getfield(L, 2, "stderr") == LUA_TSTRING) {
      err_path = lua_tostring(L, -1);
      if (strcmp(err_path, "stdout") == 0) err_to_out = 1, err_path = NULL;
    }
    if (lua_getfield(L, 2, "cwd") == LUA_TSTRING) cwd = lua_tostring(L, -1);
  }
  /* the child reports a failed open/chdir/exec through this close-on-exec pipe */
  if (pipe(errpipe) != 0) return luaL_error(L, "_proc_spawn: pipe: %s", strerror(errno));
  fcntl(errpipe[0], F_SETFD, FD_CLOEXEC);
  fcntl(errpipe[1], F_SETFD, FD_CLOEXEC);
  pid = fork();
  if (pid < 0) {
    int e = errno;
    close(errpipe[0]);
    close(errpipe[1]);
    return luaL_error(L, "_proc_spawn: fork: %s", strerror(e));
  }
  if (pid == 0) {
    int fd, code = 0;
    close(errpipe[0]);
#ifdef __linux__
    /* the run dies with the sweep; checked again in case the parent already died */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);
#endif
    (void)parent;
    signal(SIGINT, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    if (cwd && chdir(cwd) != 0) code = 1;
    if (!code && out_path) {
      fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0 || dup2(fd, 1) < 0) code = 2;
      if (fd > 1) close(fd);
    }
    if (!code && err_to_out && dup2(1, 2) < 0) code = 3;
    if (!code && err_path) {
      fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0 || dup2(fd, 2) < 0) code = 3;
      if (fd > 2) close(fd);
    }
    if (!code) {
      execvp(argv[0], (char *const *)argv);
      code = 4;
    }
    {
      int msg[2];
      msg[0] = code;
      msg[1] = errno;
      if (write(errpipe[1], msg, sizeof msg) < 0) _exit(127);
    }
    _exit(127);
  }
  close(errpipe[1]);
  {
    int msg[2];
    ssize_t r;
    do r = read(errpipe[0], msg, sizeof msg);
    while (r < 0 && errno == EINTR);
    close(errpipe[0]);
    if (r == (ssize_t)sizeof msg) {
      static const char *what[] = {"", "chdir to", "open stdout", "open stderr", "exec"};
      const char *obj = msg[0] == 1 ? cwd : msg[0] == 2 ? out_path : msg[0] == 3 ? (err_path ? err_path : "stdout") : argv[0];
      waitpid(pid, NULL, 0);
      return luaL_error(L, "_proc_spawn: cannot %s '%s': %s", what[msg[0] >= 1 && msg[0] <= 4 ? msg[0] : 4], obj,
                        strerror(msg[1]));
    }
  }
  lua_pushinteger(L, pid);
  return 1;
}

static int proc_wait(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1), r;
  int block = lua_toboolean(L, 2), st;
  do r = waitpid(pid, &st, block ? 0 : WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r < 0) return luaL_error(L, "_proc_wait: pid %d: %s", (int)pid, strerror(errno));
  if (r == 0) return 0;
  if (WIFEXITED(st)) {
    lua_pushliteral(L, "exit");
    lua_pushinteger(L, WEXITSTATUS(st));
  } else {
    lua_pushliteral(L, "signal");
    lua_pushinteger(L, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  }
  return 2;
}

static int proc_kill(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int sig = (int)luaL_optinteger(L, 2, SIGTERM);
  if (pid <= 0) return luaL_error(L, "_proc_kill: pid must be positive, got %d", (int)pid);
  lua_pushboolean(L, kill(pid, sig) == 0);
  return 1;
}

static int proc_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  struct timespec ts;
  if (s <= 0) return 0;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return 0;
}

static int proc_ncpu(lua_State *L) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

/* the running executable, so a sweep starts its runs with the same advdiff */
static int proc_exe(lua_State *L) {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return 0;
  lua_pushlstring(L, buf, (size_t)n);
  return 1;
}

static int proc_getpid(lua_State *L) {
  lua_pushinteger(L, getpid());
  return 1;
}

/* ---- SIGINT for a long-lived driver (lua.c's lstop/laction, kept installed) */

static lua_State *sigint_L;
static volatile sig_atomic_t sigint_armed = 1;

static void sigint_stop(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

static void sigint_action(int sig) {
  (void)sig;
  if (sigint_L && sigint_armed) lua_sethook(sigint_L, sigint_stop, LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
}

/* Unlike the executable's handler, this one stays: a notebook is interrupted
 * many times in a session. SA_RESTART keeps an idle read of the next request
 * going; the driver clears a hook that lands between cells. */
static int proc_on_sigint(lua_State *L) {
  struct sigaction sa;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  sigint_L = lua_tothread(L, -1);
  lua_pop(L, 1);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = sigint_action;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGINT, &sa, NULL) != 0) return luaL_error(L, "_proc_on_sigint: %s", strerror(errno));
  return 0;
}

/* a driver disarms it while it waits for the next request, so that a late
 * interrupt cannot hit the code that reads it */
static int proc_sigint_arm(lua_State *L) {
  sigint_armed = lua_toboolean(L, 1);
  return 0;
}

void l_register_proc(lua_State *L, int mod, int methods) {
  static const luaL_Reg fns[] = {
      {"_proc_spawn", proc_spawn}, {"_proc_wait", proc_wait},     {"_proc_kill", proc_kill},
      {"_proc_sleep", proc_sleep}, {"_proc_ncpu", proc_ncpu},     {"_proc_getpid", proc_getpid}, {"_proc_exe", proc_exe},
      {"_proc_on_sigint", proc_on_sigint}, {"_proc_sigint_arm", proc_sigint_arm}, {NULL, NULL},
  };
  l_setfuncs2(L, mod, methods, fns, NULL);
}

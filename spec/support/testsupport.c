/*
 * Test-only helpers for the specs: fork() and _exit() so the fork guard can be
 * proved, waitpid() to collect the child, a listening socket that never
 * answers (a hung server), this process's threads, file descriptors and
 * resident memory (from /proc), a plain HTTP GET (etcd's /metrics), the
 * mapped files of this process, and a Lua state of its own to run a chunk in
 * and close (so that its C modules are dlclose()d).
 * Built by `make spec` into build/spec/testsupport.so; never part of the etcd
 * module.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lua/compat.h"

static int t_fork(lua_State *L) {
  pid_t p = fork();
  if (p < 0) return luaL_error(L, "fork failed");
  lua_pushinteger(L, p);
  return 1;
}

static int t_exit(lua_State *L) {
  _exit((int)luaL_checkinteger(L, 1));
  return 0;
}

static int t_wait(lua_State *L) {
  int st = 0;
  if (waitpid((pid_t)luaL_checkinteger(L, 1), &st, 0) < 0)
    return luaL_error(L, "waitpid failed");
  lua_pushinteger(L, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  return 1;
}

/* listen() on 127.0.0.1 at a free port; returns fd, port. Accepts nothing. */
static int t_listen(lua_State *L) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a;
  socklen_t n = sizeof a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
      listen(fd, 16) < 0 || getsockname(fd, (struct sockaddr *)&a, &n) < 0)
    return luaL_error(L, "listen failed");
  lua_pushinteger(L, fd);
  lua_pushinteger(L, ntohs(a.sin_port));
  return 2;
}

/* A port that nothing listens on (bound, then released). */
static int t_free_port(lua_State *L) {
  lua_settop(L, 0);
  t_listen(L);
  close((int)lua_tointeger(L, 1));
  lua_remove(L, 1);
  return 1;
}

static int t_close(lua_State *L) {
  close((int)luaL_checkinteger(L, 1));
  return 0;
}

/* The number after `field` (e.g. "Threads:") in /proc/self/status, or -1. */
static long proc_status(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  size_t len = strlen(field);
  long v = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, field, len)) v = atol(line + len);
  if (f) fclose(f);
  return v;
}

/* threads() -> number of threads of this process */
static int t_threads(lua_State *L) {
  lua_pushinteger(L, proc_status("Threads:"));
  return 1;
}

/* This process's threads named `name` (their comm, the Name: of their
 * status): how many, and their context switches (voluntary and not), summed. */
static void named_threads(const char *name, lua_Integer *count, lua_Integer *switches) {
  char path[64], line[256];
  *count = *switches = 0;
  snprintf(path, sizeof path, "/proc/%d/task", (int)getpid());
  DIR *d = opendir(path);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char file[352];
    snprintf(file, sizeof file, "%s/%s/status", path, e->d_name);
    FILE *f = fopen(file, "r");
    int mine = 0;
    while (f && fgets(line, sizeof line, f)) {
      long long v;
      char nm[64];
      if (sscanf(line, "Name: %63s", nm) == 1) {
        mine = strcmp(nm, name) == 0;
        *count += mine;
      } else if (mine && (sscanf(line, "voluntary_ctxt_switches: %lld", &v) == 1 ||
                          sscanf(line, "nonvoluntary_ctxt_switches: %lld", &v) == 1)) {
        *switches += (lua_Integer)v;
      }
    }
    if (f) fclose(f);
  }
  if (d) closedir(d);
}

/* threads_named(name) -> number of this process's threads named `name` */
static int t_threads_named(lua_State *L) {
  lua_Integer n, sw;
  named_threads(luaL_checkstring(L, 1), &n, &sw);
  lua_pushinteger(L, n);
  return 1;
}

/* switches_named(name) -> the context switches (voluntary and not) of this
 * process's threads named `name`, summed */
static int t_switches_named(lua_State *L) {
  lua_Integer n, sw;
  named_threads(luaL_checkstring(L, 1), &n, &sw);
  lua_pushinteger(L, sw);
  return 1;
}

/* fds() -> count, kinds: this process's open file descriptors, and how many
 * of each kind ("socket", "anon_inode:[eventfd]", "pipe", "/dev/null", ...;
 * the part of the link before its first ':' for sockets and pipes). The
 * descriptor used to read the directory is not counted. */
static int t_fds(lua_State *L) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return luaL_error(L, "cannot open /proc/self/fd");
  int self = dirfd(d), n = 0;
  lua_newtable(L);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.' || atoi(e->d_name) == self) continue;
    char path[300], link[256];
    snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    ssize_t k = readlink(path, link, sizeof link - 1);
    if (k < 0) continue; /* closed meanwhile (another thread) */
    link[k] = 0;
    if (!strncmp(link, "socket:", 7) || !strncmp(link, "pipe:", 5))
      *strchr(link, ':') = 0;
    n++;
    lua_getfield(L, -1, link);
    lua_Integer c = lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_pushinteger(L, c + 1);
    lua_setfield(L, -2, link);
  }
  closedir(d);
  lua_pushinteger(L, n);
  lua_insert(L, -2);
  return 2;
}

/* rss_kb() -> resident set size of this process in KiB (VmRSS) */
static int t_rss_kb(lua_State *L) {
  lua_pushinteger(L, proc_status("VmRSS:"));
  return 1;
}

/* http_get(port, path[, seconds]) -> body | nil, err: an HTTP/1.0 GET to
 * 127.0.0.1:port (etcd serves /metrics on its client port). */
static int t_http_get(lua_State *L) {
  int port = (int)luaL_checkinteger(L, 1);
  const char *path = luaL_checkstring(L, 2);
  double secs = luaL_optnumber(L, 3, 5.0);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return luaL_error(L, "socket failed");
  struct timeval tv = {(time_t)secs, (suseconds_t)((secs - (double)(time_t)secs) * 1e6)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((uint16_t)port);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    int err = errno;
    close(fd);
    lua_pushnil(L);
    lua_pushstring(L, strerror(err));
    return 2;
  }
  char req[512];
  int rl = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
  if (rl < 0 || rl >= (int)sizeof req || send(fd, req, (size_t)rl, MSG_NOSIGNAL) != rl) {
    close(fd);
    lua_pushnil(L);
    lua_pushstring(L, "send failed");
    return 2;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (;;) {
    char buf[4096];
    ssize_t k = recv(fd, buf, sizeof buf, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) {
      int err = errno;
      close(fd);
      lua_pushnil(L);
      lua_pushstring(L, strerror(err));
      return 2;
    }
    if (k == 0) break;
    luaL_addlstring(&b, buf, (size_t)k);
  }
  close(fd);
  luaL_pushresult(&b);
  size_t n;
  const char *resp = lua_tolstring(L, -1, &n);
  const char *body = strstr(resp, "\r\n\r\n");
  int status = 0;
  if (strncmp(resp, "HTTP/1.", 7) != 0 || !body || sscanf(resp + 8, " %d", &status) != 1) {
    char msg[128];
    snprintf(msg, sizeof msg, "bad HTTP response: %.80s", resp);
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
  }
  if (lua_toboolean(L, 4)) { /* raw: status, body whatever the status */
    lua_pushinteger(L, status);
    lua_pushlstring(L, body + 4, n - (size_t)(body + 4 - resp));
    return 2;
  }
  if (status != 200) {
    lua_pushnil(L);
    lua_pushfstring(L, "HTTP status %d", status);
    return 2;
  }
  lua_pushlstring(L, body + 4, n - (size_t)(body + 4 - resp));
  return 1;
}

/* mapped(substring) -> true if a file whose path contains it is mapped into
 * this process (/proc/self/maps) */
static int t_mapped(lua_State *L) {
  const char *what = luaL_checkstring(L, 1);
  FILE *f = fopen("/proc/self/maps", "r");
  char line[4096];
  int found = 0;
  while (f && !found && fgets(line, sizeof line, f)) {
    const char *path = strchr(line, '/');
    found = path && strstr(path, what) != NULL;
  }
  if (f) fclose(f);
  lua_pushboolean(L, found);
  return 1;
}

/* run_state(chunk, path, cpath) -> true | false, err: run chunk in a new Lua
 * state with the standard libraries and that package.path/cpath, then close
 * the state (its finalizers run and its C modules are dlclose()d). */
static int t_run_state(lua_State *L) {
  const char *chunk = luaL_checkstring(L, 1);
  const char *path = luaL_checkstring(L, 2);
  const char *cpath = luaL_checkstring(L, 3);
  lua_State *S = luaL_newstate();
  if (!S) return luaL_error(L, "run_state: out of memory");
  luaL_openlibs(S);
  lua_getglobal(S, "package");
  lua_pushstring(S, path);
  lua_setfield(S, -2, "path");
  lua_pushstring(S, cpath);
  lua_setfield(S, -2, "cpath");
  lua_pop(S, 1);
  int ok = luaL_dostring(S, chunk) == LUA_OK;
  lua_pushboolean(L, ok);
  if (ok) lua_pushnil(L);
  else lua_pushstring(L, lua_tostring(S, -1));
  lua_close(S);
  return 2;
}

static int t_getpid(lua_State *L) {
  lua_pushinteger(L, getpid());
  return 1;
}

__attribute__((visibility("default"))) int luaopen_testsupport(lua_State *L) {
  static const luaL_Reg f[] = {{"fork", t_fork},
                               {"exit", t_exit},
                               {"wait", t_wait},
                               {"getpid", t_getpid},
                               {"listen", t_listen},
                               {"free_port", t_free_port},
                               {"close", t_close},
                               {"threads", t_threads},
                               {"threads_named", t_threads_named},
                               {"switches_named", t_switches_named},
                               {"fds", t_fds},
                               {"rss_kb", t_rss_kb},
                               {"http_get", t_http_get},
                               {"mapped", t_mapped},
                               {"run_state", t_run_state},
                               {NULL, NULL}};
  luaL_newlib(L, f);
  return 1;
}

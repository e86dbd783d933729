/*
 * Test-only helpers for the specs: fork() and _exit() so the fork guard can be
 * proved, waitpid() to collect the child, and a listening socket that never
 * answers (a hung server). Built by `make spec` into
 * build/spec/testsupport.so; never part of the etcd module.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

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

static int t_threads(lua_State *L) {
  /* number of threads of this process */
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  int n = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "Threads:", 8)) n = atoi(line + 8);
  if (f) fclose(f);
  lua_pushinteger(L, n);
  return 1;
}

/* number of this process's threads named `name` (their comm) */
static int t_threads_named(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  int n = 0;
  char path[64], line[64];
  snprintf(path, sizeof path, "/proc/%d/task", (int)getpid());
  DIR *d = opendir(path);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char comm[352];
    snprintf(comm, sizeof comm, "%s/%s/comm", path, e->d_name);
    FILE *f = fopen(comm, "r");
    if (f && fgets(line, sizeof line, f)) {
      line[strcspn(line, "\n")] = 0;
      if (!strcmp(line, name)) n++;
    }
    if (f) fclose(f);
  }
  if (d) closedir(d);
  lua_pushinteger(L, n);
  return 1;
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
                               {NULL, NULL}};
  luaL_newlib(L, f);
  return 1;
}

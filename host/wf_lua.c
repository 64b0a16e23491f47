/*
 * wf_lua.c — the workflow Lua state: its allocator (the per-host memory limit), the
 * instruction budget, the sandbox workflow files run in, loading and checking workflow
 * files, and the sandboxed `require` for helper modules in the workflows directory.
 *
 * Workflow code never sees the state's globals: each file runs with its own _ENV whose reads
 * fall through to a read-only base (built by wf_ctx.lua) and whose writes raise.
 */
#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua-cjson.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "wf_engine.h"

typedef struct {
  const char *name;
  const char *data;
  size_t len;
} wf_embedded_file;
extern const wf_embedded_file wf_embedded[];

static wf_host *host_of(lua_State *L) { return *(wf_host **)lua_getextraspace(L); }

/* ---- limits -------------------------------------------------------------------------- */

static void kill_hook(lua_State *L, lua_Debug *ar);

/* Counts every byte of the state. While workflow code runs, an allocation past the limit
 * fails (Lua raises "not enough memory") and the running coroutine is marked so that a
 * pcall cannot swallow it. */
static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  wf_host *h = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    h->mem_used -= old;
    return NULL;
  }
  if (nsize > old && h->mem_enforce && h->mem_used + (nsize - old) > h->cfg.memory_limit) {
    if (h->current && h->current->co && !h->trip) {
      h->trip = 2;
      lua_sethook(h->current->co, kill_hook, LUA_MASKLINE | LUA_MASKCOUNT, 1);
    }
    return NULL;
  }
  void *p = realloc(ptr, nsize);
  if (!p) return NULL;
  h->mem_used = h->mem_used - old + nsize;
  return p;
}

/* Raised on every instruction once a coroutine went over its budget or the memory limit. */
static void kill_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  wf_host *h = host_of(L);
  if (!h->trip) h->trip = 1;
  lua_sethook(L, kill_hook, LUA_MASKLINE | LUA_MASKCOUNT, 1);
  /* A branch thread went over: the instance's main thread, which runs it, stops too. */
  if (h->current && h->current->co && h->current->co != L)
    lua_sethook(h->current->co, kill_hook, LUA_MASKLINE | LUA_MASKCOUNT, 1);
  if (h->trip_msg[0]) { /* the same words wherever it stops next (the main thread after a branch) */
    lua_pushstring(L, h->trip_msg);
    lua_error(L);
  }
  char msg[200]; /* lua_pushfstring knows no %zu or %lld */
  if (h->trip == 2) {
    h->mem_enforce = 0; /* room to build the message */
    snprintf(msg, sizeof msg, "memory limit exceeded: the workflow Lua state reached its limit of %zu bytes "
             "(config memory_limit)", h->cfg.memory_limit);
  } else {
    snprintf(msg, sizeof msg, "instruction budget exceeded: more than %lld Lua instructions without "
             "waiting (an endless loop?) (config instruction_budget)", (long long)h->cfg.instruction_budget);
  }
  /* The position is the innermost frame in a workflow file (inside a hook, level 0 is the
   * function that was running; it may be the host's own ctx code). */
  lua_Debug d;
  int found = 0;
  for (int level = 0; !found && lua_getstack(L, level, &d); level++)
    found = lua_getinfo(L, "Sl", &d) && d.source[0] == '@' && d.currentline > 0;
  if (found) lua_pushfstring(L, "%s:%d: ", d.short_src, d.currentline);
  else luaL_where(L, 0);
  lua_pushstring(L, msg);
  lua_concat(L, 2);
  snprintf(h->trip_msg, sizeof h->trip_msg, "%s", lua_tostring(L, -1));
  lua_error(L);
}

void wf_lua_arm_budget(wf_host *h, lua_State *co) {
  int64_t b = h->cfg.instruction_budget;
  lua_sethook(co, kill_hook, LUA_MASKCOUNT, b > INT_MAX ? INT_MAX : (int)b);
}

/* ---- helpers ------------------------------------------------------------------------- */

/* What decoding JSON makes of cjson's output (wf_ctx.lua's M.decode): cjson 2.1 decodes
 * every number as a float, so a whole float in (-2^53, 2^53) becomes an integer; a null
 * field of an object is dropped; a null inside an array stays, so the array keeps its length.
 * The value at idx is changed in place. It allocates nothing and calls no metamethod: cjson's
 * tables have none. This is C, not Lua, because it runs for every outcome a workflow gets,
 * where each Lua instruction also pays the instruction budget's count hook. */
static int whole_float(lua_State *L, int idx, lua_Integer *out) {
  if (lua_isinteger(L, idx)) return 0;
  lua_Number d = lua_tonumber(L, idx);
  if (!(d > -9007199254740992.0 && d < 9007199254740992.0)) return 0; /* NaN fails too */
  lua_Integer i = (lua_Integer)d;
  if ((lua_Number)i != d) return 0;
  *out = i;
  return 1;
}

static void normalize_table(lua_State *L, int t, int null_idx) {
  luaL_checkstack(L, 4, "JSON nested too deep");
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_Integer i;
    switch (lua_type(L, -1)) {
    case LUA_TNUMBER:
      if (whole_float(L, -1, &i)) {
        lua_pushvalue(L, -2);
        lua_pushinteger(L, i);
        lua_rawset(L, t);
      }
      break;
    case LUA_TTABLE:
      normalize_table(L, lua_gettop(L), null_idx);
      break;
    case LUA_TLIGHTUSERDATA:
      if (lua_type(L, -2) == LUA_TSTRING && lua_rawequal(L, -1, null_idx)) {
        lua_pushvalue(L, -2);
        lua_pushnil(L);
        lua_rawset(L, t);
      }
      break;
    }
    lua_pop(L, 1);
  }
}

/* normalize(v, null): v as M.decode returns it (nil for null). */
int wf_lua_normalize(lua_State *L) {
  lua_settop(L, 2);
  lua_Integer i;
  switch (lua_type(L, 1)) {
  case LUA_TNUMBER:
    if (whole_float(L, 1, &i)) lua_pushinteger(L, i);
    else lua_pushvalue(L, 1);
    return 1;
  case LUA_TTABLE:
    normalize_table(L, 1, 2);
    break;
  default:
    if (lua_rawequal(L, 1, 2)) return 0;
  }
  lua_pushvalue(L, 1);
  return 1;
}

int wf_lua_callmod(wf_host *h, const char *fn, int nargs, int nres) {
  lua_State *L = h->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->mod_ref);
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
  lua_insert(L, -nargs - 1);
  return lua_pcall(L, nargs, nres, 0);
}

char *wf_json_get(wf_host *h, const char *json, const char *field) {
  lua_State *L = h->L;
  if (!json) return NULL;
  lua_pushstring(L, json);
  char *out = NULL;
  if (wf_lua_callmod(h, "decode", 1, 1) == 0 && lua_type(L, -1) == LUA_TTABLE) {
    lua_getfield(L, -1, field);
    if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) out = wf_strdup(lua_tostring(L, -1));
    else if (lua_type(L, -1) == LUA_TBOOLEAN) out = wf_strdup(lua_toboolean(L, -1) ? "true" : "false");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return out;
}

int wf_json_object_without(wf_host *h, const char *json, const char *key, char *err, size_t errlen) {
  const char *p = json;
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
  if (*p != '{') {
    snprintf(err, errlen, "it must be a JSON object ({...})");
    return -1;
  }
  if (wf_json_check(h, json, err, errlen) != 0) return -1;
  lua_State *L = h->L;
  lua_pushstring(L, json);
  lua_pushstring(L, key);
  int has = wf_lua_callmod(h, "object_has", 2, 1) != 0 || lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (has) snprintf(err, errlen, "its field \"%s\" is reserved", key);
  return has ? -1 : 0;
}

int wf_json_check(wf_host *h, const char *json, char *err, size_t errlen) {
  lua_State *L = h->L;
  lua_pushstring(L, json);
  int rc = wf_lua_callmod(h, "decode", 1, 0);
  if (rc != 0) {
    const char *m = lua_tostring(L, -1);
    if (m && !strncmp(m, "[wfhost]:", 9)) { /* the position of the host's own decode call */
      const char *p = strstr(m + 9, ": ");
      if (p) m = p + 2;
    }
    snprintf(err, errlen, "%s", m ? m : "invalid JSON");
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}

/* Reads a whole file; NULL with errno set on failure. */
static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n + 4096 > cap) {
      cap = cap ? cap * 2 : 16384;
      buf = wf_xrealloc(buf, cap);
    }
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    n += r;
    if (r == 0) break;
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) {
    free(buf);
    errno = EIO;
    return NULL;
  }
  buf[n] = 0;
  *len = n;
  return buf;
}

/* Makes sure the message on top of L names the file: Lua leaves it out for a binary chunk,
 * an out-of-memory error, or an error raised through a tail call. */
static void name_file(lua_State *L, const char *path) {
  const char *m = lua_tostring(L, -1);
  if (m && !strncmp(m, path, strlen(path))) return;
  lua_pushfstring(L, "%s: %s", path, m ? m : "error");
  lua_remove(L, -2);
}

/* Loads a file as a text chunk with its own sandboxed _ENV and runs it on L with arg (or no
 * argument). Leaves its first result on L's stack and returns 0, or leaves a message
 * ("path:line: ...") and returns -1. On the main thread (loading workflow files) the
 * instruction budget and memory limit apply here; inside a coroutine (a require from a
 * running workflow) the coroutine's own limits are already armed. */
static int run_file(wf_host *h, lua_State *L, const char *path, const char *arg) {
  size_t len;
  char *src = read_file(path, &len);
  if (!src) {
    lua_pushfstring(L, "%s: cannot read: %s", path, strerror(errno));
    return -1;
  }
  lua_pushfstring(L, "@%s", path);
  int rc = luaL_loadbufferx(L, src, len, lua_tostring(L, -1), "t");
  free(src);
  lua_remove(L, -2);
  if (rc != LUA_OK) {
    name_file(L, path);
    return -1;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->mod_ref);
  lua_getfield(L, -1, "make_env");
  lua_remove(L, -2);
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->base_ref);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) return -1;
  lua_setupvalue(L, -2, 1);
  int nargs = 0;
  if (arg) {
    lua_pushstring(L, arg);
    nargs = 1;
  }
  /* Only the outermost file arms the limits: a require inside it must not disarm them. */
  int main_thread = L == h->L && !h->mem_enforce;
  if (main_thread) {
    wf_lua_arm_budget(h, L);
    h->trip = 0;
    h->trip_msg[0] = 0;
    h->mem_enforce = 1;
  }
  rc = lua_pcall(L, nargs, 1, 0);
  if (main_thread) {
    h->mem_enforce = 0;
    lua_sethook(L, NULL, 0, 0);
    h->trip = 0;
  }
  if (rc != LUA_OK) {
    if (!lua_isstring(L, -1)) {
      lua_pop(L, 1);
      lua_pushfstring(L, "%s: raised a non-string error while loading", path);
    }
    name_file(L, path);
    return -1;
  }
  return 0;
}

/* ---- sandboxed require and print ----------------------------------------------------- */

/* require "lib.pricing" loads <workflows dir>/lib/pricing.lua in the sandbox, once per host. */
static int l_sandbox_require(lua_State *L) {
  wf_host *h = host_of(L);
  const char *name = luaL_checkstring(L, 1);
  size_t n = strlen(name);
  if (n == 0 || n > 200 || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != n ||
      name[0] == '.' || strstr(name, ".."))
    return luaL_error(L, "require: bad module name '%s' (use dotted names like \"lib.pricing\")", name);
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->modules_ref);
  lua_getfield(L, -1, name);
  if (lua_toboolean(L, -1)) {
    if (lua_islightuserdata(L, -1)) return luaL_error(L, "require: module '%s' requires itself (a loop)", name);
    return 1;
  }
  lua_pop(L, 1);
  if (!h->workflows_dir) return luaL_error(L, "require: no workflows directory is loaded");
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s.lua", h->workflows_dir, name);
  for (char *p = path + strlen(h->workflows_dir) + 1; *p; p++)
    if (*p == '.' && strcmp(p, ".lua") != 0) *p = '/';
  lua_pushlightuserdata(L, (void *)l_sandbox_require); /* loading marker */
  lua_setfield(L, -2, name);
  if (run_file(h, L, path, name) != 0) {
    lua_pushnil(L);
    lua_setfield(L, -3, name);
    return lua_error(L);
  }
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
  } else if (lua_istable(L, -1)) {
    /* A module is shared by every instance: read-only, so that none can change it for the
     * others (or for its own replay). */
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->mod_ref);
    lua_getfield(L, -1, "readonly_deep");
    lua_remove(L, -2);
    lua_insert(L, -2);
    lua_pushfstring(L, "module '%s'", name);
    lua_call(L, 2, 1);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, name);
  return 1;
}

/* print(...) writes a log line tagged with the running instance; silent during replay. */
static int l_sandbox_print(lua_State *L) {
  wf_host *h = host_of(L);
  if (h->current && h->current->replaying) return 0;
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  wf_log(h, WF_LOG_INFO, h->current ? h->current->id : NULL, NULL, "%s", lua_tostring(L, -1));
  return 0;
}

/* ---- the state ----------------------------------------------------------------------- */

int wf_lua_open(wf_host *h) {
  lua_State *L = lua_newstate(l_alloc, h);
  if (!L) return wf_fail(h, WF_ERROR, "cannot create a Lua state");
  h->L = L;
  *(wf_host **)lua_getextraspace(L) = h;
  /* Collect at 1.5x live memory rather than 2x: parked coroutines are most of the heap. */
  lua_gc(L, LUA_GCINC, 150, 0, 0);
  luaL_openlibs(L);
  const wf_embedded_file *f = wf_embedded;
  while (f->name && strcmp(f->name, "wf_ctx") != 0) f++;
  if (!f->name || luaL_loadbufferx(L, f->data, f->len, "=[wfhost]", "t") != LUA_OK)
    return wf_fail(h, WF_ERROR, "cannot load the host's Lua side: %s", f->name ? lua_tostring(L, -1) : "missing");
  lua_pushlightuserdata(L, h);
  lua_pushcclosure(L, wf_step_note, 1);
  luaL_requiref(L, "cjson", luaopen_cjson, 0);
  lua_pushcfunction(L, wf_lua_normalize);
  if (lua_pcall(L, 3, 1, 0) != LUA_OK)
    return wf_fail(h, WF_ERROR, "cannot start the host's Lua side: %s", lua_tostring(L, -1));
  h->mod_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->mod_ref); /* workflow.define checks schedules with it */
  lua_pushcfunction(L, wf_sched_l_check);
  lua_setfield(L, -2, "schedule_check");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_sandbox_print);
  lua_pushcfunction(L, l_sandbox_require);
  if (wf_lua_callmod(h, "make_base", 2, 1) != 0)
    return wf_fail(h, WF_ERROR, "cannot build the sandbox: %s", lua_tostring(L, -1));
  h->base_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  h->defs_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  h->modules_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return WF_OK;
}

void wf_lua_close(wf_host *h) {
  if (h->L) lua_close(h->L);
  h->L = NULL;
  free(h->workflows_dir);
  h->workflows_dir = NULL;
}

/* ---- loading workflow files ---------------------------------------------------------- */

/* The line of the first `workflow.define` in a file: `return workflow.define {...}` is a
 * tail call, which leaves no caller frame for define() to read its line from. */
static int define_line(const char *path) {
  size_t len;
  char *src = read_file(path, &len);
  if (!src) return 0;
  int line = 1, found = 0;
  const char *hit = strstr(src, "workflow.define");
  for (const char *p = src; hit && p < hit; p++)
    if (*p == '\n') line++;
  found = hit ? line : 0;
  free(src);
  return found;
}

/* A file named NAME@VERSION.lua must define workflow NAME at VERSION, so that the name of a
 * file tells which version it holds. Returns 0, or -1 with the problem in msg. */
static int check_versioned_name(const char *path, int line, const char *name, int version, char *msg, size_t n) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  const char *at = strrchr(base, '@');
  if (!at) return 0;
  size_t stem = (size_t)(strrchr(base, '.') - base); /* the name ends with ".lua" */
  const char *digits = at + 1;
  size_t nd = stem - (size_t)(digits - base);
  long v = 0;
  int ok = nd > 0 && nd <= 9 && digits[0] != '0' && strspn(digits, "0123456789") >= nd;
  for (size_t i = 0; ok && i < nd; i++) v = v * 10 + (digits[i] - '0');
  if (!ok) {
    snprintf(msg, n, "%s: a versioned workflow file is named NAME@VERSION.lua with VERSION a positive "
             "integer (like order@2.lua)", path);
    return -1;
  }
  size_t nlen = (size_t)(at - base);
  if (strlen(name) != nlen || strncmp(name, base, nlen) != 0) {
    snprintf(msg, n, "%s:%d: the file name says workflow '%.*s', but the file defines '%s': rename the file "
             "%s@%d.lua", path, line, (int)nlen, base, name, name, version);
    return -1;
  }
  if (v != version) {
    snprintf(msg, n, "%s:%d: the file name says version %ld, but the definition has version = %d: rename "
             "the file %s@%d.lua, or set version = %ld", path, line, v, version, name, version, v);
    return -1;
  }
  return 0;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lists the *.lua regular files directly in dir, sorted. */
static int list_lua_files(const char *dir, char ***out, size_t *n) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  char **v = NULL;
  size_t cnt = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name);
    if (len < 5 || strcmp(e->d_name + len - 4, ".lua") != 0 || e->d_name[0] == '.') continue;
    char path[PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
    v = wf_xrealloc(v, (cnt + 1) * sizeof *v);
    v[cnt++] = wf_strdup(path);
  }
  closedir(d);
  qsort(v, cnt, sizeof *v, cmp_str);
  *out = v;
  *n = cnt;
  return 0;
}

int wf_lua_load_dir(wf_host *h, const char *dir, int check_only) {
  lua_State *L = h->L;
  char **files;
  size_t nfiles;
  if (list_lua_files(dir, &files, &nfiles) != 0)
    return wf_fail(h, WF_NOTFOUND, "cannot read workflows directory %s: %s", dir, strerror(errno));
  char *saved_dir = h->workflows_dir;
  h->workflows_dir = wf_strdup(dir);
  /* A fresh require cache: modules are loaded again from this directory. */
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->modules_ref);
  lua_newtable(L);
  lua_rawseti(L, LUA_REGISTRYINDEX, h->modules_ref);
  int old_modules = luaL_ref(L, LUA_REGISTRYINDEX);

  int top = lua_gettop(L);
  lua_newtable(L); /* "name@version" -> definition (for this directory) */
  int found = lua_gettop(L);
  luaL_Buffer errs;
  luaL_buffinit(L, &errs);
  int nerr = 0;
  for (size_t i = 0; i < nfiles; i++) {
    char msg[1024];
    msg[0] = 0;
    if (run_file(h, L, files[i], NULL) != 0) {
      const char *m = lua_tostring(L, -1);
      size_t plen = strlen(files[i]);
      /* `return workflow.define {...}` is a tail call: its errors come without a line. */
      if (m && !strncmp(m, files[i], plen) && !strncmp(m + plen, ": workflow.define", 17))
        snprintf(msg, sizeof msg, "%s:%d%s", files[i], define_line(files[i]), m + plen);
      else
        snprintf(msg, sizeof msg, "%s", m);
      lua_pop(L, 1);
    } else {
      int def = lua_gettop(L);
      lua_pushvalue(L, def);
      int ok = wf_lua_callmod(h, "is_definition", 1, 1) == 0 && lua_toboolean(L, -1);
      lua_pop(L, 1);
      if (!ok) {
        snprintf(msg, sizeof msg, "%s: does not return a workflow definition (end the file with "
                 "`return workflow.define { name = ..., run = function(ctx, input) ... end }`)", files[i]);
      } else {
        lua_getfield(L, def, "line");
        int line = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (line == 0) {
          line = define_line(files[i]);
          lua_pushinteger(L, line);
          lua_setfield(L, def, "line");
          lua_pushstring(L, files[i]);
          lua_setfield(L, def, "source");
        }
        /* The whole path, for the catalog (short_src may be cut). */
        char *abs = realpath(files[i], NULL);
        lua_pushstring(L, abs ? abs : files[i]);
        free(abs);
        lua_setfield(L, def, "file");
        lua_getfield(L, def, "name");
        lua_getfield(L, def, "version");
        char key[300];
        snprintf(key, sizeof key, "%s@%d", lua_tostring(L, -2), (int)lua_tointeger(L, -1));
        lua_getfield(L, found, key);
        if (check_versioned_name(files[i], line, lua_tostring(L, def + 1), (int)lua_tointeger(L, def + 2), msg,
                                 sizeof msg) != 0) {
          /* msg says what is wrong */
        } else if (!lua_isnil(L, -1)) {
          lua_getfield(L, -1, "source");
          lua_getfield(L, -2, "line");
          snprintf(msg, sizeof msg, "%s:%d: duplicate workflow '%s' version %d (also defined at %s:%d)",
                   files[i], line, lua_tostring(L, def + 1), (int)lua_tointeger(L, def + 2),
                   lua_tostring(L, -2), (int)lua_tointeger(L, -1));
        } else {
          lua_pushvalue(L, def);
          lua_setfield(L, found, key);
        }
      }
      lua_settop(L, def - 1);
    }
    /* Every problem is reported, up to what the error message can hold. */
    if (msg[0] && nerr++ < 12) {
      if (nerr > 1) luaL_addchar(&errs, '\n');
      luaL_addstring(&errs, msg);
    }
  }
  if (nerr > 12) {
    char more[64];
    snprintf(more, sizeof more, "\n... and %d more problems", nerr - 12);
    luaL_addstring(&errs, more);
  }
  for (size_t i = 0; i < nfiles; i++) free(files[i]);
  free(files);
  luaL_pushresult(&errs);
  int rc = WF_OK;
  if (nerr) {
    rc = wf_fail(h, WF_LUA, "%s", lua_tostring(L, -1));
  } else if (!check_only) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->defs_ref);
    int defs = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, found)) {
      lua_pushvalue(L, -2);
      lua_pushvalue(L, -2);
      lua_settable(L, defs);
      /* "name" -> the newest version */
      lua_getfield(L, -1, "name");
      lua_getfield(L, defs, lua_tostring(L, -1));
      lua_getfield(L, -3, "version");
      lua_Integer v = lua_tointeger(L, -1);
      lua_Integer cur = 0;
      if (!lua_isnil(L, -2)) {
        lua_getfield(L, -2, "version");
        cur = lua_tointeger(L, -1);
        lua_pop(L, 1);
      }
      lua_pop(L, 2);
      if (v >= cur) { /* the same version reloaded replaces the old definition */
        lua_pushvalue(L, -2);
        lua_setfield(L, defs, lua_tostring(L, -2));
      }
      lua_pop(L, 2);
    }
  }
  lua_settop(L, top);
  if (rc != WF_OK || check_only) {
    free(h->workflows_dir);
    h->workflows_dir = saved_dir;
    lua_rawgeti(L, LUA_REGISTRYINDEX, old_modules);
    lua_rawseti(L, LUA_REGISTRYINDEX, h->modules_ref);
  } else {
    free(saved_dir);
  }
  luaL_unref(L, LUA_REGISTRYINDEX, old_modules);
  return rc;
}

int wf_lua_push_def(wf_host *h, const char *workflow, int *version) {
  lua_State *L = h->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->defs_ref);
  if (*version > 0) lua_pushfstring(L, "%s@%d", workflow, *version);
  else lua_pushstring(L, workflow);
  lua_gettable(L, -2);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 2);
    return 0;
  }
  lua_getfield(L, -1, "version");
  *version = (int)lua_tointeger(L, -1);
  lua_getfield(L, -2, "run");
  lua_replace(L, -4);
  lua_pop(L, 2);
  return 1;
}

int wf_lua_has_workflow(wf_host *h, const char *workflow) {
  int v = 0;
  if (!wf_lua_push_def(h, workflow, &v)) return 0;
  lua_pop(h->L, 1);
  return v;
}

size_t wf_lua_workflow_names(wf_host *h, char ***names, int **versions, char ***sources) {
  lua_State *L = h->L;
  size_t n = 0;
  *names = NULL;
  *versions = NULL;
  if (sources) *sources = NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->defs_ref);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    if (strchr(lua_tostring(L, -2), '@')) {
      *names = wf_xrealloc(*names, (n + 1) * sizeof **names);
      *versions = wf_xrealloc(*versions, (n + 1) * sizeof **versions);
      lua_getfield(L, -1, "name");
      lua_getfield(L, -2, "version");
      (*names)[n] = wf_strdup(lua_tostring(L, -2));
      (*versions)[n] = (int)lua_tointeger(L, -1);
      lua_pop(L, 2);
      if (sources) {
        *sources = wf_xrealloc(*sources, (n + 1) * sizeof **sources);
        lua_getfield(L, -1, "file");
        (*sources)[n] = wf_strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
      }
      n++;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return n;
}

/* Copies the string field k of the table on top of L (NULL if absent). */
static char *field_dup(lua_State *L, const char *k) {
  lua_getfield(L, -1, k);
  char *v = lua_type(L, -1) == LUA_TSTRING ? wf_strdup(lua_tostring(L, -1)) : NULL;
  lua_pop(L, 1);
  return v;
}

size_t wf_lua_def_schedules(wf_host *h, wf_def_schedule **out) {
  lua_State *L = h->L;
  size_t n = 0;
  *out = NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->defs_ref);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    /* "name" keys hold each workflow's newest version ("name@version" keys every version). */
    if (lua_type(L, -2) == LUA_TSTRING && !strchr(lua_tostring(L, -2), '@')) {
      lua_getfield(L, -1, "schedule");
      if (lua_istable(L, -1)) {
        *out = wf_xrealloc(*out, (n + 1) * sizeof **out);
        wf_def_schedule *d = &(*out)[n++];
        d->workflow = wf_strdup(lua_tostring(L, -3));
        d->cron = field_dup(L, "cron");
        d->timezone = field_dup(L, "timezone");
        d->catch_up = field_dup(L, "catch_up");
        d->overlap = field_dup(L, "overlap");
        d->input = field_dup(L, "input");
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return n;
}

void wf_lua_free_def_schedules(wf_def_schedule *list, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(list[i].workflow);
    free(list[i].cron);
    free(list[i].timezone);
    free(list[i].catch_up);
    free(list[i].overlap);
    free(list[i].input);
  }
  free(list);
}

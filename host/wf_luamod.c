/*
 * wf_luamod.c — `require "wfhost"`: the public API as a Lua module, so busted specs (and
 * Lua tools) drive the real engine. It uses only wfhost.h. Built as wfhost.so without
 * linking liblua: the lua5.4 interpreter that loads it already holds the VM.
 *
 *   local wfhost = require "wfhost"
 *   local h = assert(wfhost.open { db = "t.db", workflows = "workflows", virtual_time = true })
 *   h:register_action("charge", function(params, call) return { ok = true } end)
 *   h:subscribe("audit", "order.*", function(msg, delivery) print(msg.id, msg.topic) end)
 *   local id = assert(h:start("order", { id = 1 }))
 *   h:drain()
 *   print(h:get(id).status)
 *
 * Runtime failures return nil, message, code (code is a wf result name such as "not_found");
 * bad arguments raise. Actions are Lua functions called with (params, call): they return a
 * result or raise an error ({ code =, message =, retryable = } or a string).
 */
#include <dlfcn.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "wf_policy.h"
#include "wfhost.h"

#define HOST_MT "wfhost.host"
#define CALL_MT "wfhost.call"
#define DELIVERY_MT "wfhost.delivery"

/* The sentinel an action function returns to complete its call later, with call:ok(result)
 * or call:fail(code, message, retryable). */
static char pending_key;

typedef struct {
  wf_host *h;
  lua_State *cb;    /* a thread of its own for calling actions from the engine */
  int cb_ref;
  int actions_ref;  /* name -> Lua function */
  int subs_ref;     /* subscriber name -> Lua function */
  int64_t vnow;     /* the virtual clock, when enabled */
  int virtual_time;
} lhost;

static const char *const rc_names[] = {"ok", "error", "invalid", "not_found", "state", "busy",
                                       "io", "schema", "misuse", "lua"};

static int push_fail(lua_State *L, lhost *lh, int rc) {
  lua_pushnil(L);
  lua_pushstring(L, lh && lh->h ? wf_errmsg(lh->h) : "error");
  lua_pushstring(L, rc >= 0 && rc <= WF_LUA ? rc_names[rc] : "error");
  return 3;
}

static lhost *check_host(lua_State *L) {
  lhost *lh = luaL_checkudata(L, 1, HOST_MT);
  if (!lh->h) luaL_error(L, "wfhost: the host is closed");
  return lh;
}

/* JSON exactly as workflows see it: the host's own Lua side (lua/wf_ctx.lua, compiled into
 * the library as wf_embedded), loaded once into the caller's state. Its decode turns whole
 * numbers into integers and drops null fields; its encode writes sparse arrays as objects. */
typedef struct {
  const char *name;
  const char *data;
  size_t len;
} wf_embedded_file;
extern const wf_embedded_file wf_embedded[]; /* private to the build; see cmake/embed.cmake */
int wf_lua_normalize(lua_State *L);          /* private to the build; see host/wf_lua.c */

static int noop(lua_State *L) {
  (void)L;
  return 0;
}

/* Pushes the host's Lua-side module (cached in the registry). */
static void push_host_lua(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, "wfhost.lua_side") == LUA_TTABLE) return;
  lua_pop(L, 1);
  const wf_embedded_file *f = wf_embedded;
  while (f->name && strcmp(f->name, "wf_ctx") != 0) f++;
  if (!f->name || luaL_loadbufferx(L, f->data, f->len, "=[wfhost]", "t") != LUA_OK)
    luaL_error(L, "wfhost: the host's Lua side is missing from this build");
  lua_pushcfunction(L, noop);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  lua_call(L, 1, 1);
  lua_pushcfunction(L, wf_lua_normalize);
  lua_call(L, 3, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, "wfhost.lua_side");
}

/* Encodes the value at idx; the JSON text is left on the stack (NULL for nil). */
static const char *to_json(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_isnoneornil(L, idx)) return NULL;
  push_host_lua(L);
  lua_getfield(L, -1, "encode");
  lua_remove(L, -2);
  lua_pushvalue(L, idx);
  lua_call(L, 1, 1);
  return lua_tostring(L, -1);
}

/* Pushes the decoded value of json (nil for NULL; the text itself if it is not JSON). */
static void push_json(lua_State *L, const char *json) {
  if (!json) {
    lua_pushnil(L);
    return;
  }
  push_host_lua(L);
  lua_getfield(L, -1, "decode");
  lua_remove(L, -2);
  lua_pushstring(L, json);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    lua_pushstring(L, json);
  }
}

static void set_str(lua_State *L, const char *k, const char *v);

static int64_t virtual_clock(void *ud) { return ((lhost *)ud)->vnow; }

static int64_t opt_int(lua_State *L, int t, const char *k, int64_t def) {
  lua_getfield(L, t, k);
  int64_t v = lua_isnil(L, -1) ? def : (int64_t)luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* wfhost.open { db =, workflows =, virtual_time =, now =, seed =, cache_size =,
 *               instruction_budget =, memory_limit =, max_payload =, history_warn =,
 *               history_limit =, durability = "full"|"normal",
 *               client = bool, log_level = "debug"|"info"|"warn"|"error"|"none" } */
static int l_open(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "db");
  const char *db = luaL_checkstring(L, -1);
  lhost *lh = lua_newuserdatauv(L, sizeof *lh, 0);
  memset(lh, 0, sizeof *lh);
  lh->cb_ref = lh->actions_ref = lh->subs_ref = LUA_NOREF;
  luaL_setmetatable(L, HOST_MT);
  int ud = lua_gettop(L);

  wf_config cfg;
  wf_config_init(&cfg);
  lua_getfield(L, 1, "client");
  cfg.mode = lua_toboolean(L, -1) ? WF_MODE_CLIENT : WF_MODE_HOST;
  lua_getfield(L, 1, "virtual_time");
  lh->virtual_time = lua_toboolean(L, -1);
  lua_pop(L, 2);
  lh->vnow = opt_int(L, 1, "now", 1700000000000);
  if (lh->virtual_time) {
    cfg.clock = virtual_clock;
    cfg.clock_ud = lh;
  }
  cfg.seed = (uint64_t)opt_int(L, 1, "seed", 0);
  cfg.cache_size = (int)opt_int(L, 1, "cache_size", 0);
  cfg.instruction_budget = opt_int(L, 1, "instruction_budget", 0);
  cfg.memory_limit = (size_t)opt_int(L, 1, "memory_limit", 0);
  cfg.max_payload = (size_t)opt_int(L, 1, "max_payload", 0);
  cfg.history_warn = opt_int(L, 1, "history_warn", 0);
  cfg.history_limit = opt_int(L, 1, "history_limit", 0);
  lua_getfield(L, 1, "durability");
  if (lua_isstring(L, -1) && !strcmp(lua_tostring(L, -1), "normal")) cfg.durability = WF_DURABILITY_NORMAL;
  lua_getfield(L, 1, "log_level");
  const char *ll = lua_tostring(L, -1);
  cfg.log_level = !ll ? WF_LOG_WARN
                  : !strcmp(ll, "debug") ? WF_LOG_DEBUG
                  : !strcmp(ll, "info") ? WF_LOG_INFO
                  : !strcmp(ll, "error") ? WF_LOG_ERROR
                  : !strcmp(ll, "none") ? (wf_log_level)99 : WF_LOG_WARN;
  lua_pop(L, 2);

  lua_newtable(L);
  lh->actions_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  lh->subs_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lh->cb = lua_newthread(L);
  lh->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  int rc = wf_host_open(db, &cfg, &lh->h);
  lua_getfield(L, 1, "workflows");
  if (rc == WF_OK && lua_isstring(L, -1) && cfg.mode == WF_MODE_HOST) rc = wf_load_dir(lh->h, lua_tostring(L, -1));
  if (rc != WF_OK) {
    int n = push_fail(L, lh, rc);
    wf_host_close(lh->h);
    lh->h = NULL;
    return n;
  }
  lua_pushvalue(L, ud);
  return 1;
}

static int l_close(lua_State *L) {
  lhost *lh = luaL_checkudata(L, 1, HOST_MT);
  if (lh->h) wf_host_close(lh->h);
  lh->h = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, lh->cb_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, lh->actions_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, lh->subs_ref);
  lh->cb_ref = lh->actions_ref = lh->subs_ref = LUA_NOREF;
  return 0;
}

/* h:load(dir), h:check(dir), h:snapshot(path): true, or nil, message, code. */
static int with_path(lua_State *L, int (*fn)(wf_host *, const char *)) {
  lhost *lh = check_host(L);
  int rc = fn(lh->h, luaL_checkstring(L, 2));
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_pushboolean(L, 1);
  return 1;
}
static int l_load(lua_State *L) { return with_path(L, wf_load_dir); }
static int l_check(lua_State *L) { return with_path(L, wf_check_dir); }
static int l_snapshot(lua_State *L) { return with_path(L, wf_snapshot); }

/* ---- actions ------------------------------------------------------------------------- */

/* A call handle as Lua sees it: completes the call once; a handle collected without being
 * completed fails its call, so that nothing waits for it forever. */
typedef struct {
  wf_call *c;
  lhost *lh;
} lcall;

static lcall *check_call(lua_State *L) {
  lcall *lc = luaL_checkudata(L, 1, CALL_MT);
  if (!lc->c) luaL_error(L, "wfhost: this call was already completed");
  return lc;
}

/* An error value fails the call: a table { type = (or code =), message =, retryable =,
 * retry_after = ms } or a string (a permanent "error"). */
/* The type (its `type`, or its `code`) and message of an error value: a table, or a string
 * (type "error"). Pushes both (strings or nil) for as long as they are used; returns 1 if the
 * value was a table. */
static int error_fields(lua_State *L, int idx, const char **type, const char **msg) {
  idx = lua_absindex(L, idx);
  int is_table = lua_istable(L, idx);
  if (is_table) {
    if (lua_getfield(L, idx, "type") == LUA_TNIL) {
      lua_pop(L, 1);
      lua_getfield(L, idx, "code");
    }
    lua_getfield(L, idx, "message");
  } else {
    lua_pushnil(L);
    lua_pushvalue(L, idx);
  }
  *type = lua_tostring(L, -2) ? lua_tostring(L, -2) : "error";
  *msg = lua_tostring(L, -1) ? lua_tostring(L, -1) : is_table ? "" : "error";
  return is_table;
}

static void fail_from_value(lua_State *L, wf_call *c, int idx) {
  idx = lua_absindex(L, idx);
  const char *type, *msg;
  if (error_fields(L, idx, &type, &msg)) {
    lua_getfield(L, idx, "retryable");
    lua_getfield(L, idx, "retry_after");
    if (lua_isinteger(L, -1) && lua_toboolean(L, -2)) wf_call_fail_after(c, type, msg, lua_tointeger(L, -1));
    else wf_call_fail(c, type, msg, lua_toboolean(L, -2) ? WF_TRANSIENT : WF_PERMANENT);
    lua_pop(L, 2);
  } else {
    wf_call_fail(c, type, msg, WF_PERMANENT);
  }
  lua_pop(L, 2);
}

/* call:ok(result) */
static int l_call_ok(lua_State *L) {
  lcall *lc = check_call(L);
  if (!wf_call_host(lc->c)) { /* the host has closed (lc->lh may be gone): drop it */
    wf_call_fail(lc->c, "closed", "the host has closed", WF_PERMANENT);
    lc->c = NULL;
    return 0;
  }
  lua_settop(L, 2);
  const char *json = to_json(L, 2);
  wf_call *c = lc->c;
  lc->c = NULL;
  wf_call_ok(c, json);
  return 0;
}

/* call:fail({ code =, message =, retryable = }) or call:fail("message") */
static int l_call_fail(lua_State *L) {
  lcall *lc = check_call(L);
  wf_call *c = lc->c;
  lc->c = NULL;
  fail_from_value(L, c, 2);
  return 0;
}

static int l_call_gc(lua_State *L) {
  lcall *lc = luaL_checkudata(L, 1, CALL_MT);
  if (lc->c) wf_call_fail(lc->c, "abandoned", "the test dropped this call without completing it", WF_TRANSIENT);
  lc->c = NULL;
  return 0;
}

/* Calls the Lua function registered for the action (or for "*") on the callback thread with
 * (params, call): call.key, call.attempt, call.instance, call.action, call:ok(), call:fail().
 * Its return value completes the call, an error fails it, and returning wfhost.pending leaves
 * the call to be completed later through the handle. */
static void lua_action(wf_call *c, void *ud) {
  lhost *lh = ud;
  lua_State *L = lh->cb;
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, lh->actions_ref);
  lua_getfield(L, -1, wf_call_action(c));
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_getfield(L, -1, "*");
  }
  lua_remove(L, -2);
  push_json(L, wf_call_params(c));
  lcall *lc = lua_newuserdatauv(L, sizeof *lc, 1);
  lc->c = c;
  lc->lh = lh;
  luaL_setmetatable(L, CALL_MT);
  lua_createtable(L, 0, 4);
  lua_pushstring(L, wf_call_key(c));
  lua_setfield(L, -2, "key");
  lua_pushinteger(L, wf_call_attempt(c));
  lua_setfield(L, -2, "attempt");
  lua_pushstring(L, wf_call_instance(c));
  lua_setfield(L, -2, "instance");
  lua_pushstring(L, wf_call_action(c));
  lua_setfield(L, -2, "action");
  lua_pushinteger(L, wf_call_deadline(c));
  lua_setfield(L, -2, "deadline");
  lua_setiuservalue(L, -2, 1); /* read through the handle's __index */
  int rc = lua_pcall(L, 2, 1, 0);
  int later = rc == LUA_OK && lua_islightuserdata(L, -1) && lua_touserdata(L, -1) == &pending_key;
  if (!lc->c || later) { /* completed by the function itself, or kept for later */
    if (lc->c) wf_call_hold(c);
    lua_settop(L, 0);
    return;
  }
  lc->c = NULL;
  if (rc != LUA_OK) {
    fail_from_value(L, c, -1);
  } else {
    push_host_lua(L);
    lua_getfield(L, -1, "encode");
    lua_pushvalue(L, -3);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) wf_call_fail(c, "bad_result", lua_tostring(L, -1), WF_PERMANENT);
    else wf_call_ok(c, lua_tostring(L, -1));
  }
  lua_settop(L, 0);
}

/* call.key, call.attempt, call.instance, call.action, and the methods. */
static int l_call_index(lua_State *L) {
  luaL_checkudata(L, 1, CALL_MT);
  const char *k = luaL_checkstring(L, 2);
  if (!strcmp(k, "ok")) lua_pushcfunction(L, l_call_ok);
  else if (!strcmp(k, "fail")) lua_pushcfunction(L, l_call_fail);
  else if (!strcmp(k, "done")) lua_pushboolean(L, ((lcall *)lua_touserdata(L, 1))->c == NULL);
  else {
    lua_getiuservalue(L, 1, 1);
    lua_getfield(L, -1, k);
  }
  return 1;
}

/* The policy table at idx (as a spec writes it) into opts. Leaves the normalised table on the
 * stack (it holds the strings opts points to) and returns 0, or pushes a message and returns
 * -1. *types: the non_retryable array to free. */
static int policy_from_lua(lua_State *L, int idx, wf_action_opts *o, const char ***types) {
  idx = lua_absindex(L, idx);
  push_host_lua(L);
  lua_getfield(L, -1, "normalize_policy");
  lua_remove(L, -2);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) return -1;
  int t = lua_gettop(L);
  if (lua_getfield(L, t, "retry") == LUA_TTABLE) {
    char *joined = NULL;
    wf_retry_from_lua(L, -1, &o->retry, &joined);
    free(joined);
    if (lua_getfield(L, -1, "non_retryable") == LUA_TTABLE) {
      size_t n = lua_rawlen(L, -1);
      *types = calloc(n + 1, sizeof **types);
      if (!*types) abort();
      for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i + 1);
        (*types)[i] = lua_tostring(L, -1);
        lua_pop(L, 1);
      }
      o->retry.non_retryable = *types;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, t, "breaker") == LUA_TTABLE) wf_breaker_from_lua(L, -1, &o->breaker);
  lua_pop(L, 1);
  lua_getfield(L, t, "at_most_once");
  if (lua_toboolean(L, -1)) o->flags |= WF_ACTION_AT_MOST_ONCE;
  lua_pop(L, 1);
  return 0;
}

/* h:register_action(name, fn [, policy]) */
static int l_register_action(lua_State *L) {
  lhost *lh = check_host(L);
  const char *name = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  wf_action_opts opts;
  wf_action_opts_init(&opts);
  const char **types = NULL;
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    if (policy_from_lua(L, 4, &opts, &types) != 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "action '%s': %s", name, lua_tostring(L, -2));
      return 2;
    }
  }
  int rc = wf_register_action(lh->h, name, lua_action, lh, &opts);
  free(types);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_rawgeti(L, LUA_REGISTRYINDEX, lh->actions_ref);
  lua_pushvalue(L, 3);
  lua_setfield(L, -2, name);
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- outbox subscribers --------------------------------------------------------------- */

/* A delivery handle as Lua sees it: completes the delivery once; a handle collected without
 * being completed fails it, so that nothing waits for it forever. */
typedef struct {
  wf_delivery *d;
} ldelivery;

static ldelivery *check_delivery(lua_State *L) {
  ldelivery *ld = luaL_checkudata(L, 1, DELIVERY_MT);
  if (!ld->d) luaL_error(L, "wfhost: this delivery was already completed");
  return ld;
}

/* An error value fails the delivery: { type = (or code =), message = } or a string. */
static void fail_delivery(lua_State *L, wf_delivery *d, int idx) {
  const char *type, *msg;
  error_fields(L, idx, &type, &msg);
  wf_delivery_fail(d, type, msg);
  lua_pop(L, 2);
}

/* delivery:ok() */
static int l_delivery_ok(lua_State *L) {
  ldelivery *ld = check_delivery(L);
  wf_delivery *d = ld->d;
  ld->d = NULL;
  wf_delivery_ok(d);
  return 0;
}

/* delivery:fail({ type =, message = }) or delivery:fail("message") */
static int l_delivery_fail(lua_State *L) {
  ldelivery *ld = check_delivery(L);
  wf_delivery *d = ld->d;
  ld->d = NULL;
  fail_delivery(L, d, 2);
  return 0;
}

static int l_delivery_gc(lua_State *L) {
  ldelivery *ld = luaL_checkudata(L, 1, DELIVERY_MT);
  if (ld->d) wf_delivery_fail(ld->d, "abandoned", "the test dropped this delivery without completing it");
  ld->d = NULL;
  return 0;
}

static int l_delivery_index(lua_State *L) {
  luaL_checkudata(L, 1, DELIVERY_MT);
  const char *k = luaL_checkstring(L, 2);
  if (!strcmp(k, "ok")) lua_pushcfunction(L, l_delivery_ok);
  else if (!strcmp(k, "fail")) lua_pushcfunction(L, l_delivery_fail);
  else if (!strcmp(k, "done")) lua_pushboolean(L, ((ldelivery *)lua_touserdata(L, 1))->d == NULL);
  else {
    lua_getiuservalue(L, 1, 1);
    lua_getfield(L, -1, k);
  }
  return 1;
}

/* Calls the subscriber's Lua function on the callback thread with (message, delivery):
 * message = { id, topic, payload, attempt, instance, subscriber }. Returning completes the
 * delivery, an error fails it, and returning wfhost.pending leaves it to delivery:ok() or
 * delivery:fail() later. */
static void lua_subscriber(wf_delivery *d, const char *msg_id, const char *topic, const char *payload, int attempt,
                           void *ud) {
  lhost *lh = ud;
  lua_State *L = lh->cb;
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, lh->subs_ref);
  lua_getfield(L, -1, wf_delivery_subscriber(d));
  lua_remove(L, -2);
  lua_createtable(L, 0, 6);
  lua_pushstring(L, msg_id);
  lua_setfield(L, -2, "id");
  lua_pushstring(L, topic);
  lua_setfield(L, -2, "topic");
  push_json(L, payload);
  lua_setfield(L, -2, "payload");
  lua_pushinteger(L, attempt);
  lua_setfield(L, -2, "attempt");
  lua_pushstring(L, wf_delivery_instance(d));
  lua_setfield(L, -2, "instance");
  lua_pushstring(L, wf_delivery_subscriber(d));
  lua_setfield(L, -2, "subscriber");
  ldelivery *ld = lua_newuserdatauv(L, sizeof *ld, 1);
  ld->d = d;
  luaL_setmetatable(L, DELIVERY_MT);
  lua_pushvalue(L, -2);
  lua_setiuservalue(L, -2, 1); /* message fields read through the handle too */
  int rc = lua_pcall(L, 2, 1, 0);
  int later = rc == LUA_OK && lua_islightuserdata(L, -1) && lua_touserdata(L, -1) == &pending_key;
  if (!ld->d || later) { /* completed by the function itself, or kept for later */
    if (ld->d) wf_delivery_hold(d);
    lua_settop(L, 0);
    return;
  }
  ld->d = NULL;
  if (rc != LUA_OK) fail_delivery(L, d, -1);
  else wf_delivery_ok(d);
  lua_settop(L, 0);
}

/* h:subscribe(name, pattern, fn [, policy]): policy = { retry = {...} } as for an action. */
static int l_subscribe(lua_State *L) {
  lhost *lh = check_host(L);
  const char *name = luaL_checkstring(L, 2);
  const char *pattern = luaL_checkstring(L, 3);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  wf_subscriber_opts so;
  wf_subscriber_opts_init(&so);
  const char **types = NULL;
  if (!lua_isnoneornil(L, 5)) {
    luaL_checktype(L, 5, LUA_TTABLE);
    wf_action_opts ao;
    wf_action_opts_init(&ao);
    ao.retry = so.retry;
    if (policy_from_lua(L, 5, &ao, &types) != 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "subscriber '%s': %s", name, lua_tostring(L, -2));
      return 2;
    }
    if (lua_getfield(L, -1, "breaker") != LUA_TNIL || lua_getfield(L, -2, "at_most_once") != LUA_TNIL) {
      free(types);
      lua_pushnil(L);
      lua_pushfstring(L, "subscriber '%s': a subscriber's policy takes retry only", name);
      return 2;
    }
    lua_pop(L, 2);
    so.retry = ao.retry;
  }
  int rc = wf_subscribe(lh->h, name, pattern, lua_subscriber, lh, &so);
  free(types);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_rawgeti(L, LUA_REGISTRYINDEX, lh->subs_ref);
  lua_pushvalue(L, 4);
  lua_setfield(L, -2, name);
  lua_pushboolean(L, 1);
  return 1;
}

/* h:outbox { status = "pending"|"failed", limit = n } -> { { id, topic, instance, payload,
 * subscriber, status, attempts, next_at, last_error, created_at }, ... } */
static int l_outbox(lua_State *L) {
  lhost *lh = check_host(L);
  const char *status = NULL;
  int limit = 0;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "status");
    lua_getfield(L, 2, "limit");
    status = lua_tostring(L, -2);
    limit = (int)luaL_optinteger(L, -1, 0);
  }
  wf_outbox_entry *e;
  size_t n;
  int rc = wf_outbox_list(lh->h, status, limit, &e, &n);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 0, 10);
    set_str(L, "id", e[i].msg_id);
    set_str(L, "topic", e[i].topic);
    set_str(L, "instance", e[i].instance_id);
    push_json(L, e[i].payload_json);
    lua_setfield(L, -2, "payload");
    set_str(L, "subscriber", e[i].subscriber);
    set_str(L, "status", e[i].status);
    lua_pushinteger(L, e[i].attempts);
    lua_setfield(L, -2, "attempts");
    lua_pushinteger(L, e[i].next_at);
    lua_setfield(L, -2, "next_at");
    set_str(L, "last_error", e[i].last_error);
    lua_pushinteger(L, e[i].created_at);
    lua_setfield(L, -2, "created_at");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  wf_outbox_list_free(e, n);
  return 1;
}

/* h:outbox_retry(msg_id [, subscriber]) */
static int l_outbox_retry(lua_State *L) {
  lhost *lh = check_host(L);
  int rc = wf_outbox_retry(lh->h, luaL_checkstring(L, 2), luaL_optstring(L, 3, NULL));
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- requests ------------------------------------------------------------------------ */

static int l_start(lua_State *L) {
  lhost *lh = check_host(L);
  const char *wf = luaL_checkstring(L, 2);
  const char *json = to_json(L, 3);
  const char *id = luaL_optstring(L, 4, NULL);
  char out[WF_ID_MAX + 1];
  int rc = wf_start(lh->h, wf, json, id, out, NULL, NULL);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_pushstring(L, out);
  return 1;
}

static int l_signal(lua_State *L) {
  lhost *lh = check_host(L);
  const char *id = luaL_checkstring(L, 2);
  const char *ev = luaL_checkstring(L, 3);
  const char *json = to_json(L, 4);
  int rc = wf_signal(lh->h, id, ev, json, NULL, NULL);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* h:cancel(id) and h:retry(id). */
static int request(lua_State *L, int (*fn)(wf_host *, const char *, wf_done_fn, void *)) {
  lhost *lh = check_host(L);
  int rc = fn(lh->h, luaL_checkstring(L, 2), NULL, NULL);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_pushboolean(L, 1);
  return 1;
}
static int l_cancel(lua_State *L) { return request(L, wf_cancel); }
static int l_retry(lua_State *L) { return request(L, wf_retry); }

static int l_drain(lua_State *L) {
  lhost *lh = check_host(L);
  int rc = wf_host_drain(lh->h);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* h:step(): one turn of drain; true if it ran one, false if the host is idle. */
static int l_step(lua_State *L) {
  lhost *lh = check_host(L);
  int busy;
  int rc = wf_host_step(lh->h, &busy);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_pushboolean(L, busy);
  return 1;
}

/* h:advance(ms): moves the virtual clock and runs what fell due. */
static int l_advance(lua_State *L) {
  lhost *lh = check_host(L);
  if (!lh->virtual_time) return luaL_error(L, "wfhost: advance needs open { virtual_time = true }");
  lua_Integer ms = luaL_checkinteger(L, 2);
  luaL_argcheck(L, ms >= 0, 2, "cannot go back in time");
  lh->vnow += ms;
  return l_drain(L);
}

static int l_now(lua_State *L) {
  lhost *lh = check_host(L);
  lua_pushinteger(L, lh->vnow);
  return 1;
}

/* ---- reads --------------------------------------------------------------------------- */

static void set_str(lua_State *L, const char *k, const char *v) {
  if (!v) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

static void push_info(lua_State *L, const wf_info *i) {
  lua_createtable(L, 0, 12);
  set_str(L, "id", i->id);
  set_str(L, "workflow", i->workflow);
  lua_pushinteger(L, i->version);
  lua_setfield(L, -2, "version");
  set_str(L, "status", i->status);
  set_str(L, "state", i->state);
  set_str(L, "error", i->error);
  set_str(L, "waiting_for", i->waiting_for);
  push_json(L, i->input_json);
  lua_setfield(L, -2, "input");
  push_json(L, i->data_json);
  lua_setfield(L, -2, "data");
  push_json(L, i->output_json);
  lua_setfield(L, -2, "output");
  lua_pushinteger(L, i->created_at);
  lua_setfield(L, -2, "created_at");
  lua_pushinteger(L, i->updated_at);
  lua_setfield(L, -2, "updated_at");
  set_str(L, "parent", i->parent_id);
  lua_pushinteger(L, i->run);
  lua_setfield(L, -2, "run");
  if (i->progress >= 0) {
    lua_pushnumber(L, i->progress);
    lua_setfield(L, -2, "progress");
    set_str(L, "progress_message", i->progress_message);
  }
}

static int l_get(lua_State *L) {
  lhost *lh = check_host(L);
  wf_info *i;
  int rc = wf_get(lh->h, luaL_checkstring(L, 2), &i);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  push_info(L, i);
  wf_info_free(i);
  return 1;
}

static int l_list(lua_State *L) {
  lhost *lh = check_host(L);
  const char *status = NULL, *workflow = NULL;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "status");
    lua_getfield(L, 2, "workflow");
    status = lua_tostring(L, -2);
    workflow = lua_tostring(L, -1);
  }
  wf_info *list;
  size_t n;
  int rc = wf_list(lh->h, status, workflow, 0, &list, &n);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    push_info(L, &list[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  wf_info_list_free(list, n);
  return 1;
}

static void set_int(lua_State *L, const char *k, int64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

/* h:schedules() -> { { id, workflow, cron, timezone, catch_up, overlap, origin, next_at,
 * last_at, last_instance, missed, overlapped }, ... } (times in ms, 0: none) */
static int l_schedules(lua_State *L) {
  lhost *lh = check_host(L);
  wf_schedule_info *list;
  size_t n;
  int rc = wf_schedules(lh->h, &list, &n);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    const wf_schedule_info *s = &list[i];
    lua_createtable(L, 0, 12);
    set_str(L, "id", s->id);
    set_str(L, "workflow", s->workflow);
    set_str(L, "cron", s->cron);
    set_str(L, "timezone", s->timezone);
    set_str(L, "catch_up", s->catch_up);
    set_str(L, "overlap", s->overlap);
    set_str(L, "origin", s->origin);
    set_str(L, "last_instance", s->last_instance);
    set_int(L, "next_at", s->next_at);
    set_int(L, "last_at", s->last_at);
    set_int(L, "missed", s->missed);
    set_int(L, "overlapped", s->overlapped);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  wf_schedules_free(list, n);
  return 1;
}

static int l_history(lua_State *L) {
  lhost *lh = check_host(L);
  wf_history_entry *e;
  size_t n;
  int rc = wf_history(lh->h, luaL_checkstring(L, 2), &e, &n);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, e[i].pos);
    lua_setfield(L, -2, "pos");
    lua_pushinteger(L, e[i].seq);
    lua_setfield(L, -2, "seq");
    set_str(L, "kind", e[i].kind);
    set_str(L, "name", e[i].name);
    push_json(L, e[i].data_json);
    lua_setfield(L, -2, "data");
    lua_pushinteger(L, e[i].at);
    lua_setfield(L, -2, "at");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  wf_history_free(e, n);
  return 1;
}

/* h:workflows() -> { { workflow, version, loaded, newest, active, file }, ... } */
static int l_workflows(lua_State *L) {
  lhost *lh = check_host(L);
  wf_workflow_info *w;
  size_t n;
  int rc = wf_workflows(lh->h, &w, &n);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 0, 6);
    set_str(L, "workflow", w[i].name);
    lua_pushinteger(L, w[i].version);
    lua_setfield(L, -2, "version");
    lua_pushboolean(L, w[i].loaded);
    lua_setfield(L, -2, "loaded");
    lua_pushboolean(L, w[i].newest);
    lua_setfield(L, -2, "newest");
    lua_pushinteger(L, w[i].active);
    lua_setfield(L, -2, "active");
    set_str(L, "file", w[i].source);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  wf_workflows_free(w, n);
  return 1;
}

/* h:breakers() -> { { action, key, state, calls, failures, failure_ratio, open_until }, ... } */
static int l_breakers(lua_State *L) {
  lhost *lh = check_host(L);
  wf_breaker_info *b;
  size_t n;
  int rc = wf_breakers(lh->h, &b, &n);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 0, 7);
    set_str(L, "action", b[i].action);
    set_str(L, "key", b[i].key);
    set_str(L, "state", b[i].state);
    lua_pushinteger(L, b[i].calls);
    lua_setfield(L, -2, "calls");
    lua_pushinteger(L, b[i].failures);
    lua_setfield(L, -2, "failures");
    lua_pushnumber(L, b[i].failure_ratio);
    lua_setfield(L, -2, "failure_ratio");
    lua_pushinteger(L, b[i].open_until);
    lua_setfield(L, -2, "open_until");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  wf_breakers_free(b, n);
  return 1;
}

/* h:isolate(action [, key]), h:close_breaker(action [, key]) */
static int breaker_op(lua_State *L, int (*op)(wf_host *, const char *, const char *)) {
  lhost *lh = check_host(L);
  int rc = op(lh->h, luaL_checkstring(L, 2), luaL_optstring(L, 3, NULL));
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_pushboolean(L, 1);
  return 1;
}
static int l_isolate(lua_State *L) { return breaker_op(L, wf_breaker_isolate); }
static int l_close_breaker(lua_State *L) { return breaker_op(L, wf_breaker_close); }

/* h:action_stats() -> { attempts = { ok = n, ... }, retries = { transient = n, ... }, ... } */
static int l_action_stats(lua_State *L) {
  lhost *lh = check_host(L);
  wf_action_stats st;
  wf_action_stats_get(lh->h, &st);
  lua_createtable(L, 0, 8);
  lua_createtable(L, 0, WF_OUTCOME_COUNT);
  for (int i = 0; i < WF_OUTCOME_COUNT; i++) {
    lua_pushinteger(L, (lua_Integer)st.attempts[i]);
    lua_setfield(L, -2, wf_outcome_name((wf_outcome)i));
  }
  lua_setfield(L, -2, "attempts");
  lua_createtable(L, 0, 4);
  const struct { const char *k; uint64_t v; } r[] = {
      {"transient", st.retries_transient}, {"timeout", st.retries_timeout},
      {"lost", st.retries_lost}, {"circuit_open", st.retries_circuit_open}};
  for (size_t i = 0; i < sizeof r / sizeof r[0]; i++) {
    lua_pushinteger(L, (lua_Integer)r[i].v);
    lua_setfield(L, -2, r[i].k);
  }
  lua_setfield(L, -2, "retries");
  const struct { const char *k; uint64_t v; } f[] = {
      {"rejections", st.rejections}, {"exhausted", st.exhausted}, {"breaker_opened", st.breaker_opened},
      {"breaker_half_opened", st.breaker_half_opened}, {"breaker_closed", st.breaker_closed},
      {"in_flight", st.in_flight}, {"breakers_open", st.breakers_open}};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
    lua_pushinteger(L, (lua_Integer)f[i].v);
    lua_setfield(L, -2, f[i].k);
  }
  return 1;
}

/* h:load_plugin(path): real C actions next to Lua ones. The plugin resolves wf_* from this
 * module, which Lua loaded privately (RTLD_LOCAL): make its symbols global first. */
static int l_load_plugin(lua_State *L) {
  lhost *lh = check_host(L);
  const char *path = luaL_checkstring(L, 2);
  Dl_info self;
  if (dladdr((void *)l_load_plugin, &self) && self.dli_fname)
    dlopen(self.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
  void *so = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!so) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot load plugin %s: %s", path, dlerror());
    lua_pushliteral(L, "not_found");
    return 3;
  }
  wf_plugin_init_fn init = (wf_plugin_init_fn)(uintptr_t)dlsym(so, WF_PLUGIN_INIT_SYMBOL);
  if (!init) {
    dlclose(so);
    lua_pushnil(L);
    lua_pushfstring(L, "plugin %s has no %s function", path, WF_PLUGIN_INIT_SYMBOL);
    lua_pushliteral(L, "not_found");
    return 3;
  }
  int rc = init(lh->h);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* h:replay_check(id) -> true, or false and the first divergence */
static int l_replay_check(lua_State *L) {
  lhost *lh = check_host(L);
  char *report = NULL;
  int rc = wf_replay_check(lh->h, luaL_checkstring(L, 2), &report);
  if (rc != WF_OK) return push_fail(L, lh, rc);
  lua_pushboolean(L, report == NULL);
  if (!report) return 1;
  lua_pushstring(L, report);
  free(report);
  return 2;
}

/* h:next_timer() -> the earliest armed due time (ms), or nil */
static int l_next_timer(lua_State *L) {
  lhost *lh = check_host(L);
  int64_t due;
  if (wf_next_timer(lh->h, &due) != WF_OK) return 0;
  lua_pushinteger(L, due);
  return 1;
}

/* h:set_now(ms): sets the virtual clock (forward only) without running anything. */
static int l_set_now(lua_State *L) {
  lhost *lh = check_host(L);
  if (!lh->virtual_time) return luaL_error(L, "wfhost: set_now needs open { virtual_time = true }");
  lua_Integer ms = luaL_checkinteger(L, 2);
  luaL_argcheck(L, ms >= lh->vnow, 2, "cannot go back in time");
  lh->vnow = ms;
  return 0;
}

static const luaL_Reg host_methods[] = {
  {"load", l_load},       {"check", l_check},     {"register_action", l_register_action},
  {"start", l_start},     {"signal", l_signal},   {"cancel", l_cancel},
  {"retry", l_retry},     {"drain", l_drain},     {"step", l_step},     {"advance", l_advance},
  {"now", l_now},         {"get", l_get},         {"list", l_list},
  {"history", l_history}, {"close", l_close},     {"replay_check", l_replay_check},
  {"snapshot", l_snapshot}, {"next_timer", l_next_timer}, {"set_now", l_set_now},
  {"load_plugin", l_load_plugin}, {"breakers", l_breakers}, {"isolate", l_isolate},
  {"close_breaker", l_close_breaker}, {"action_stats", l_action_stats}, {"schedules", l_schedules},
  {"workflows", l_workflows},
  {"close_breaker", l_close_breaker}, {"action_stats", l_action_stats},
  {"subscribe", l_subscribe}, {"outbox", l_outbox}, {"outbox_retry", l_outbox_retry},
  {NULL, NULL}};

int luaopen_wfhost(lua_State *L);
int luaopen_wfhost(lua_State *L) {
  luaL_newmetatable(L, HOST_MT);
  luaL_newlib(L, host_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_close);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
  luaL_newmetatable(L, CALL_MT);
  lua_pushcfunction(L, l_call_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_call_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, DELIVERY_MT);
  lua_pushcfunction(L, l_delivery_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_delivery_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushlightuserdata(L, &pending_key);
  lua_setfield(L, -2, "pending");
  lua_pushcfunction(L, l_open);
  lua_setfield(L, -2, "open");
  lua_pushstring(L, WFHOST_VERSION);
  lua_setfield(L, -2, "version");
  push_host_lua(L); /* durations exactly as workflows read them, in milliseconds */
  lua_getfield(L, -1, "duration_ms");
  lua_setfield(L, -3, "duration_ms");
  lua_pop(L, 1);
  return 1;
}

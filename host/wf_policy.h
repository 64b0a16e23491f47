/*
 * wf_policy.h — action policies as values (wf_policy.c): checks, backoff arithmetic, and
 * reading a policy from a Lua table. Private to the library; the Lua module (wf_luamod.c)
 * uses it too, for policies given by the test kit.
 */
#ifndef WF_POLICY_H
#define WF_POLICY_H

#include <lua.h>
#include <stddef.h>

#include "wfhost.h"

int wf_valid_error_type(const char *t);
int wf_retry_check(const wf_retry_policy *r, char *err, size_t n);
int wf_breaker_check(const wf_breaker_policy *b, int64_t attempt_timeout_ms, char *err, size_t n);
/* The backoff before the next attempt after `failed` failed attempts, u uniform in [0, 1). */
int64_t wf_retry_delay(const wf_retry_policy *r, int failed, double u);
char *wf_join_types(const char *const *types);
int wf_types_has(const char *joined, const char *type);
/* Reads a normalised policy table (wf_ctx normalize_policy) over the values in r / b. */
void wf_retry_from_lua(lua_State *L, int idx, wf_retry_policy *r, char **nonretry);
void wf_breaker_from_lua(lua_State *L, int idx, wf_breaker_policy *b);

#endif /* WF_POLICY_H */

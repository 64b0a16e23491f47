/*
 * wf_patch.c — ctx:patched(change_id), Temporal's patching: rolling a change of workflow
 * code out to instances that are already running.
 *
 * The workflow asks, at the place where its code changed, whether this instance takes the
 * new path. An instance that reaches the place live (running new code past the end of its
 * history) takes it: a `patch` entry named after the change is journaled there, and the
 * answer is true. An instance replaying history written before the change finds no such
 * entry there, and gets false: it goes on along the old path, which its history recorded.
 * Each later replay finds the same thing at the same place, so the answer never changes for
 * an instance. (ctx:patched memoizes the first answer per change id for the rest of the run in
 * lua/wf_ctx.lua, so one id guards every place of one change consistently, and a loop journals
 * one entry, not one per turn.)
 *
 * "The place" is the number of commands issued before it: a patch entry carries the seq of
 * the last command, as state entries do. It reads the loaded history only (in->hist), and
 * yields nothing: it is a `note`, callable from anywhere in workflow code.
 */
#include <lauxlib.h>
#include <string.h>

#include "wf_engine.h"

#define CHANGE_ID_MAX 128

/* Whether the history being replayed has the patch entry for id at the instance's current
 * place. */
static int recorded(const wf_instance *in, const char *id) {
  for (size_t i = 0; i < in->nhist; i++) {
    const wf_history_entry *e = &in->hist[i];
    if (e->seq == in->seq && e->name && !strcmp(e->kind, "patch") && !strcmp(e->name, id)) return 1;
  }
  return 0;
}

int wf_patch_note(wf_host *h, wf_instance *in, lua_State *L) {
  size_t len = 0;
  const char *id = lua_tolstring(L, 3, &len);
  int bad = !id || len == 0 || len > CHANGE_ID_MAX || strlen(id) != len;
  for (size_t i = 0; !bad && i < len; i++) bad = (unsigned char)id[i] < 0x20 || id[i] == 0x7f;
  if (bad)
    return luaL_error(L, "ctx:patched(change_id): the change id must be a non-empty string of at most %d bytes "
                      "without control characters", CHANGE_ID_MAX);
  int use;
  if (in->replaying) {
    use = recorded(in, id);
  } else {
    wf_histsize_check_note(h, in, L); /* raises if the history is full */
    use = 1;
    wf_engine_history(h, in, in->seq, "patch", id, NULL);
  }
  lua_pushboolean(L, use);
  return 1;
}

/*
 * wf_progress.c — ctx:progress(percent, message): how far an instance's long work has come,
 * for the people who watch it (`wfhost show`, `wfhost list`, wf_info.progress).
 *
 * Progress is a field of the instance row, written in the batch of the step that set it, like
 * the state label. It is not journaled: a workflow may report progress at every turn of a long
 * loop, and a history entry per report would fill the history for nothing. Replay restores it
 * the way it restores the state label: the code calls ctx:progress again with the same values
 * as it runs through its history, so the row is left as it was.
 */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "wf_engine.h"

#define PROGRESS_MESSAGE_MAX 256

int wf_progress_note(wf_host *h, wf_instance *in, lua_State *L) {
  (void)h;
  double pct = lua_type(L, 3) == LUA_TNUMBER ? lua_tonumber(L, 3) : -1;
  if (!(pct >= 0 && pct <= 100)) /* NaN fails both */
    return luaL_error(L, "ctx:progress(percent, message): percent must be a number from 0 to 100");
  size_t len = 0;
  const char *msg = lua_isnoneornil(L, 4) ? NULL : lua_tolstring(L, 4, &len);
  if ((!lua_isnoneornil(L, 4) && lua_type(L, 4) != LUA_TSTRING) || len > PROGRESS_MESSAGE_MAX ||
      (msg && strlen(msg) != len))
    return luaL_error(L, "ctx:progress(percent, message): message must be a string of at most %d bytes",
                      PROGRESS_MESSAGE_MAX);
  int same_msg = (!msg && !in->progress_msg) || (msg && in->progress_msg && !strcmp(msg, in->progress_msg));
  if (in->has_progress && in->progress == pct && same_msg) return 0;
  in->has_progress = 1;
  in->progress = pct;
  if (!same_msg) {
    free(in->progress_msg);
    in->progress_msg = wf_strdup(msg);
  }
  in->row_dirty = 1;
  return 0;
}

/*
 * wf_child.c — child workflows (ctx:child, ctx:start_child) as the engine sees them.
 *
 * A child is an ordinary instance whose row names its parent, the parent's command that
 * started it (parent_seq) and whether it is detached. Everything between the two goes
 * through their durable inboxes, written in the batch of the step that causes it:
 *
 *   - the parent's `child` command inserts the child's row in the parent's batch: the child
 *     exists exactly when the command is journaled, so a crash never starts it twice;
 *   - when the child ends, its outcome becomes an event for the parent, named
 *     WF_EVENT_CHILD + the child's id, in the child's last batch (unless the parent ended or
 *     no longer waits for it: parent_seq 0);
 *   - a cancellation for the child is an event named WF_EVENT_CANCEL in its inbox: it
 *     survives a crash like any event, and the child takes it at its next step;
 *   - handle:signal() is an event in the child's inbox, like `wfhost signal`.
 *
 * A parent that ends (or continues as new) cancels its attached children that are still
 * running; detached ones run on.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wf_engine.h"

char *wf_child_event_name(const char *child_id) {
  size_t n = strlen(WF_EVENT_CHILD) + strlen(child_id) + 1;
  char *s = wf_xmalloc(n);
  snprintf(s, n, "%s%s", WF_EVENT_CHILD, child_id);
  return s;
}

char *wf_child_record(const char *child_id, int detached) {
  char *q = wf_json_quote(child_id);
  size_t n = strlen(q) + 32;
  char *s = wf_xmalloc(n);
  snprintf(s, n, "{\"id\":%s,\"detached\":%s}", q, detached ? "true" : "false");
  free(q);
  return s;
}

/* The status of an instance: the engine's if it has it in memory, else the store's.
 * Returns -1 if there is no such instance (or the store failed: the batch rolls back). */
static int status_of(wf_host *h, const char *id) {
  wf_instance *in = wf_engine_find(h, id);
  if (in && in->loaded) return (int)in->status;
  wf_info *info = NULL;
  int rc = wf_store_get_instance(h->st, id, &info);
  if (rc != WF_OK && rc != WF_NOTFOUND) wf_engine_store_rc(h, rc);
  int st = info ? wf_status_parse(info->status) : -1;
  wf_info_free(info);
  return st;
}

int wf_child_start(wf_host *h, wf_instance *parent, int64_t seq, const char *workflow, const char *input,
                   const char *child_id, int detached, char *err, size_t errlen) {
  if (!wf_valid_id(child_id)) {
    snprintf(err, errlen, "the child id \"%.80s%s\" is not valid (1 to %d printable bytes without spaces)%s",
             child_id, strlen(child_id) > 80 ? "..." : "", WF_ID_MAX,
             strlen(child_id) > WF_ID_MAX ? ": give the child a shorter id with opts.id" : "");
    return -1;
  }
  int version = wf_lua_has_workflow(h, workflow);
  if (!version) {
    snprintf(err, errlen, "no workflow named '%.128s' is loaded", workflow);
    return -1;
  }
  int created = 0;
  int rc = wf_engine_create_child(h, child_id, workflow, version, input, parent->id, seq, detached, &created);
  if (rc != WF_OK) return 0; /* the batch rolls back, and the step runs again */
  if (!created) {
    snprintf(err, errlen, "an instance with the id '%.200s' exists already: give the child another id with opts.id",
             child_id);
    return -1;
  }
  wf_log(h, WF_LOG_INFO, parent->id, NULL, "started child %s (%s)%s", child_id, workflow, detached ? ", detached" : "");
  return 0;
}

int wf_child_cancel(wf_host *h, const char *child_id) {
  int st = status_of(h, child_id);
  if (st < 0 || wf_status_final((wf_status)st)) return 0;
  int has = 0;
  wf_engine_store_rc(h, wf_store_has_event(h->st, child_id, WF_EVENT_CANCEL, &has));
  if (!has) wf_engine_add_event(h, child_id, WF_EVENT_CANCEL, "null");
  return 1;
}

int wf_child_signal(wf_host *h, const char *child_id, const char *event, const char *data) {
  int st = status_of(h, child_id);
  if (st < 0 || wf_status_final((wf_status)st)) return 0;
  wf_engine_add_event(h, child_id, event, data);
  return 1;
}

void wf_child_withdrawn(wf_host *h, wf_instance *parent, const wf_pend *p) {
  wf_engine_store_rc(h, wf_store_unlink_children(h->st, parent->id, p->seq));
  if (!p->detached) wf_child_cancel(h, p->params);
}

static void cancel_attached(void *ud, const char *id, int detached) {
  if (!detached) wf_child_cancel(ud, id);
}

/* The instance ended, or its run did: it stops waiting for its children, and the attached
 * ones that still run are cancelled. */
void wf_child_release(wf_host *h, wf_instance *in) {
  if (in->dry || !in->has_children) return; /* most instances start none: no query */
  in->has_children = 0;
  wf_engine_store_rc(h, wf_store_unlink_children(h->st, in->id, 0));
  wf_engine_store_rc(h, wf_store_each_child(h->st, in->id, cancel_attached, h));
}

void wf_child_ended(wf_host *h, wf_instance *in) {
  if (in->dry) return;
  wf_child_release(h, in);
  if (!in->parent_id) return;
  int64_t seq = 0;
  wf_engine_store_rc(h, wf_store_parent_seq(h->st, in->id, &seq));
  int pst = seq > 0 ? status_of(h, in->parent_id) : -1;
  if (pst < 0 || wf_status_final((wf_status)pst)) return;
  /* {"status": ..., "output": <JSON>} or {"status": ..., "error": "..."} */
  char *err = in->error ? wf_json_quote(in->error) : NULL;
  const char *out = in->output ? in->output : "null";
  size_t n = strlen(out) + (err ? strlen(err) : 0) + 64;
  char *data = wf_xmalloc(n);
  if (in->status == WF_ST_COMPLETED)
    snprintf(data, n, "{\"status\":\"completed\",\"output\":%s}", out);
  else
    snprintf(data, n, "{\"status\":\"%s\",\"error\":%s}", wf_status_name(in->status), err ? err : "null");
  char *name = wf_child_event_name(in->id);
  wf_engine_add_event(h, in->parent_id, name, data);
  free(name);
  free(data);
  free(err);
}

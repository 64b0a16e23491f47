/*
 * wf_store.h — the store interface: everything the engine and the client handle keep
 * durably goes through these functions, and nothing else touches the database.
 *
 * The SQLite implementation (wf_store_sqlite.c) is the embedded default. The interface is
 * kept narrow and free of SQL so that another store (PostgreSQL, for several hosts sharing
 * the work) can implement it without changing the engine.
 *
 * Model:
 *   instances  one row per instance: identity, status, state label, data, output, error.
 *   history    the append-only journal of each instance: (instance, pos) -> seq, kind, name,
 *              data, at. Replay rebuilds an instance from it.
 *   inbox      events sent to an instance; consumed (marked with the consuming seq) by the
 *              step that takes them, exactly once.
 *   timers     due times of pending sleeps and wait timeouts, one per (instance, seq).
 *   requests   cancel / retry requests written by other processes for the running host.
 *   catalog    the workflows the last host loaded, so a client can refuse an unknown name.
 *   breakers   circuit breaker states as the host last wrote them.
 *   schedules  cron schedules: what to start when, the next firing, the last one, counters.
 *   outbox     messages emitted by workflows (ctx:emit), written in the batch of the step
 *              that emitted them, and their delivery state per subscriber.
 *
 * Writes happen inside a transaction opened by wf_store_begin() and made durable by
 * wf_store_commit() (group commit: the engine writes many instances' steps in one). Every
 * function returns WF_OK or an error code from wfhost.h, with wf_store_errmsg() set.
 */
#ifndef WF_STORE_H
#define WF_STORE_H

#include "wfhost.h"

typedef struct wf_store wf_store;

/* The schema version this build writes. A database with a higher one is refused. */
#define WF_STORE_SCHEMA_VERSION 7

/* Opens or creates the database, applying migrations. On failure *out may still be set
 * (for wf_store_errmsg); close it. Returns WF_SCHEMA for a database from a newer version. */
int wf_store_open(const char *path, wf_durability durability, wf_store **out /* OUT */);
void wf_store_close(wf_store *st);
const char *wf_store_errmsg(const wf_store *st);

/* Takes an exclusive lock that keeps a second host process off this database; held until
 * wf_store_close(). WF_BUSY if another process holds it. */
int wf_store_lock_host(wf_store *st);

/* Copies the WAL into the database once it has grown (a passive checkpoint: it never waits
 * for readers) and returns WF_OK. idle: the host has had nothing to do for a while, so a
 * smaller WAL is worth a checkpoint; otherwise only a large one is, which keeps checkpoints
 * and their fsyncs off the commit path. *pending (may be NULL) is set when the WAL is big
 * enough for an idle checkpoint. Only after wf_store_lock_host(), which turns automatic
 * checkpoints off. */
int wf_store_checkpoint(wf_store *st, int idle, int *pending /* OUT */);

/* Transactions. begin takes the write lock (waiting for a writer in another process). */
int wf_store_begin(wf_store *st);
int wf_store_commit(wf_store *st);
void wf_store_rollback(wf_store *st);

/* 1 if another connection committed since the last call, else 0. Cheap: for polling. */
int wf_store_changed(wf_store *st);

/* The mutable and immutable columns of an instance, as the engine writes them. */
typedef struct wf_instance_rec {
  const char *id;
  const char *workflow;
  int version;
  const char *status;
  const char *state;       /* NULL allowed */
  const char *input;       /* JSON */
  const char *data;        /* JSON object */
  const char *output;      /* JSON or NULL */
  const char *error;       /* NULL allowed */
  const char *waiting_for; /* NULL allowed */
  int64_t created_at;
  int64_t updated_at;
  int has_progress;        /* ctx:progress was called: progress and progress_message apply */
  double progress;         /* 0 to 100 */
  const char *progress_message; /* NULL allowed */
  /* A child workflow (insert only): its parent, the parent's command that started it, and
   * whether it outlives the parent. parent_id NULL: not a child. */
  const char *parent_id;
  int64_t parent_seq;
  int detached;
} wf_instance_rec;

/* Inserts a new instance. *created is 1 if inserted, 0 if the id already existed (nothing
 * is changed then). */
int wf_store_insert_instance(wf_store *st, const wf_instance_rec *r, int *created /* OUT */);

/* *exists is 1 if an instance with this id is in the store, else 0. */
int wf_store_has_instance(wf_store *st, const char *id, int *exists /* OUT */);

/* Updates version, status, state, data, output, error, waiting_for, updated_at and progress
 * of r->id (the version is assigned when an instance started by a client first runs). A new
 * instance has no progress (insert ignores it). */
int wf_store_update_instance(wf_store *st, const wf_instance_rec *r);

/* Reads one instance (WF_NOTFOUND if absent) or a list, as the public wf_info. */
int wf_store_get_instance(wf_store *st, const char *id, wf_info **out /* OUT */);
int wf_store_list_instances(wf_store *st, const char *status, const char *workflow, int limit,
                            wf_info **out /* OUT */, size_t *n /* OUT */);

/* Calls fn for each instance id with one of the statuses (a NULL-terminated array), oldest
 * first. Used for recovery ("pending", "running") and to ingest starts from clients. */
typedef void (*wf_store_id_fn)(void *ud, const char *id);
int wf_store_each_instance(wf_store *st, const char *const *statuses, wf_store_id_fn fn, void *ud);

/* History. In a transaction an appended entry may be written with the next (wf_store_sqlite.c,
 * history_append); it is written by the commit at the latest, and the store's own reads see it. */
int wf_store_append_history(wf_store *st, const char *id, int64_t pos, int64_t seq,
                            const char *kind, const char *name, const char *data, int64_t at);
int wf_store_load_history(wf_store *st, const char *id, wf_history_entry **out /* OUT */,
                          size_t *n /* OUT */);

/* Inbox. An event's id orders events: older events have smaller ids. */
typedef struct wf_event_rec {
  int64_t event_id;
  const char *instance_id;
  const char *name;
  const char *data; /* JSON */
  int64_t at;
} wf_event_rec;
typedef void (*wf_store_event_fn)(void *ud, const wf_event_rec *ev);

int wf_store_add_event(wf_store *st, const char *id, const char *name, const char *data,
                       int64_t at, int64_t *event_id /* OUT */);
int wf_store_consume_event(wf_store *st, int64_t event_id, int64_t seq);
/* Unconsumed events of one instance, oldest first. */
int wf_store_pending_events(wf_store *st, const char *id, wf_store_event_fn fn, void *ud);
/* Unconsumed events of any instance with event_id > after, oldest first (ingest). */
int wf_store_events_after(wf_store *st, int64_t after, wf_store_event_fn fn, void *ud);

/* Timers. */
int wf_store_add_timer(wf_store *st, const char *id, int64_t seq, int64_t due);
int wf_store_delete_timer(wf_store *st, const char *id, int64_t seq);
/* Calls fn for every timer, earliest first. */
typedef void (*wf_store_timer_fn)(void *ud, const char *id, int64_t seq, int64_t due);
int wf_store_each_timer(wf_store *st, wf_store_timer_fn fn, void *ud);

/* Writes a consistent copy of the database to path (VACUUM INTO for SQLite). */
int wf_store_snapshot(wf_store *st, const char *path);

/* Circuit breakers. */
typedef struct wf_breaker_rec {
  const char *action;
  const char *key; /* "" for an action's only breaker */
  const char *state;
  int64_t calls, failures, open_until, updated_at;
} wf_breaker_rec;
typedef void (*wf_store_breaker_fn)(void *ud, const wf_breaker_rec *r);
int wf_store_put_breaker(wf_store *st, const wf_breaker_rec *r);
/* Calls fn for every breaker row, by action and key. */
int wf_store_each_breaker(wf_store *st, wf_store_breaker_fn fn, void *ud);

/* Requests from other processes: kind is "cancel", "retry", "isolate" or "close" (for the
 * last two, id is the action name, then "\x1f" and the breaker key if any). */
int wf_store_add_request(wf_store *st, const char *id, const char *kind, int64_t at);
typedef void (*wf_store_request_fn)(void *ud, int64_t req_id, const char *id, const char *kind);
/* Calls fn for each request, oldest first, then deletes them (inside the open transaction). */
int wf_store_take_requests(wf_store *st, wf_store_request_fn fn, void *ud);

/* Catalog of loaded workflows. replace_catalog empties it first (one host's view); sources
 * (NULL, or NULL entries: unknown) are the files the versions were loaded from. */
int wf_store_replace_catalog(wf_store *st, const char *const *names, const int *versions,
                             const char *const *sources, size_t n, int64_t at);
/* *known: 1 if name is in the catalog, 0 if not, -1 if the catalog is empty (no host ran). */
int wf_store_catalog_has(wf_store *st, const char *name, int *known /* OUT */);

/* Schedules. A row is a schedule's definition (id .. origin) and where it stands (next_at ..
 * overlapped). timezone NULL is UTC; last_at 0 and last_instance NULL: never fired. */
typedef struct wf_schedule_rec {
  const char *id, *workflow, *cron, *timezone, *input, *catch_up, *overlap, *origin;
  int64_t next_at, last_at;
  const char *last_instance;
  int64_t missed, overlapped, created_at, updated_at;
} wf_schedule_rec;
typedef void (*wf_store_schedule_fn)(void *ud, const wf_schedule_rec *r);
/* Inserts a schedule (id .. next_at, updated_at as created_at), or replaces the definition of
 * an existing one, keeping its next_at unless cron or timezone changed, and its counters. */
int wf_store_put_schedule(wf_store *st, const wf_schedule_rec *r);
/* Moves a schedule to its next firing: adds to its counters, and records the last firing that
 * started an instance (last_at 0 and last_instance NULL: keep them). WF_NOTFOUND if absent. */
int wf_store_advance_schedule(wf_store *st, const char *id, int64_t next_at, int64_t last_at,
                              const char *last_instance, int64_t missed, int64_t overlapped, int64_t at);
/* *deleted (may be NULL): 1 if a row was deleted. */
int wf_store_delete_schedule(wf_store *st, const char *id, int *deleted /* OUT */);
/* Calls fn for every schedule, by id. */
int wf_store_each_schedule(wf_store *st, wf_store_schedule_fn fn, void *ud);
/* A workflow version: from the catalog (source may be NULL, count 0), or a version that
 * unfinished instances run (source NULL, count: how many). */
typedef void (*wf_store_version_fn)(void *ud, const char *name, int version, const char *source,
                                    int64_t count);
/* The catalog, by name and version. */
int wf_store_each_catalog(wf_store *st, wf_store_version_fn fn, void *ud);
/* The versions that unfinished instances (pending, running, waiting, suspended) run, by
 * workflow and version, with their counts; version 0 is "not chosen yet" (a pending instance
 * started by a client). */
int wf_store_active_versions(wf_store *st, wf_store_version_fn fn, void *ud);
/* Outbox. A message has an order number (ord, assigned by the store, never reused: a later
 * emit has a larger one) and one delivery per subscriber it is routed to: pending (with its
 * failed attempts and the time of the next), or failed (a dead letter). A delivered one is
 * removed, and the message with its last delivery. A message no subscriber matched when it
 * was emitted is unrouted until wf_store_route_message(). */
typedef struct wf_message_rec {
  const char *msg_id;
  const char *instance_id;
  const char *topic;
  const char *payload; /* JSON */
  int64_t at;
} wf_message_rec;

typedef struct wf_delivery_rec {
  int64_t ord;
  const char *msg_id;
  const char *instance_id;
  const char *topic;
  const char *payload;
  const char *subscriber; /* NULL for an unrouted message */
  const char *status;     /* pending, failed, unrouted */
  int attempts;           /* failed attempts so far */
  int64_t next_at;        /* when the next attempt may start */
  const char *last_error; /* NULL allowed */
  int64_t created_at;
  int64_t updated_at;
} wf_delivery_rec;
typedef void (*wf_store_delivery_fn)(void *ud, const wf_delivery_rec *d);

/* Adds a message with a pending delivery for each of the n subscribers (none: unrouted).
 * *ord gets its order number, or 0 if a message with this id exists (nothing is written). */
int wf_store_add_message(wf_store *st, const wf_message_rec *m, const char *const *subscribers, size_t n,
                         int64_t *ord /* OUT */);
/* Calls fn for every unrouted message, oldest first. */
int wf_store_each_unrouted(wf_store *st, wf_store_delivery_fn fn, void *ud);
/* Routes an unrouted message to n >= 1 subscribers (pending deliveries due at `at`). */
int wf_store_route_message(wf_store *st, int64_t ord, const char *const *subscribers, size_t n, int64_t at);
/* Calls fn for the subscriber's pending deliveries with ord > after, oldest first, at most limit. */
int wf_store_next_deliveries(wf_store *st, const char *subscriber, int64_t after, int limit,
                             wf_store_delivery_fn fn, void *ud);
/* Records a delivery's state: status NULL (delivered: removed), "pending" (attempts failed so
 * far, next attempt at next_at) or "failed" (a dead letter); error: the last failure. */
int wf_store_set_delivery(wf_store *st, const char *subscriber, int64_t ord, const char *status, int attempts,
                          int64_t next_at, const char *error, int64_t at);
/* Lists deliveries (and unrouted messages) in emit order: status NULL for all, "pending" for
 * pending and unrouted ones, "failed" for dead letters; at most limit (0: no limit). */
int wf_store_list_deliveries(wf_store *st, const char *status, int limit, wf_store_delivery_fn fn, void *ud);
/* Makes the failed deliveries of a message (to one subscriber, or NULL: to all) pending again
 * with no attempt counted, due at `at`; *n (may be NULL) gets how many. */
int wf_store_requeue_deliveries(wf_store *st, const char *msg_id, const char *subscriber, int64_t at,
                                int *n /* OUT */);

/* Child workflows and runs. parent_seq: the parent's command that waits for the child, 0 once
 * it no longer does (or for an instance that is not a child). */
int wf_store_parent_seq(wf_store *st, const char *id, int64_t *seq /* OUT */);
/* The children of parent_id stop reporting to it: those started by command seq, or all (0). */
int wf_store_unlink_children(wf_store *st, const char *parent_id, int64_t seq);
/* Calls fn for every unfinished child of parent_id (not completed, failed or cancelled). */
typedef void (*wf_store_child_fn)(void *ud, const char *id, int detached);
int wf_store_each_child(wf_store *st, const char *parent_id, wf_store_child_fn fn, void *ud);
/* *has: 1 if the instance has an unconsumed event of that name. */
int wf_store_has_event(wf_store *st, const char *id, const char *name, int *has /* OUT */);
/* ctx:continue_as_new: the instance's next run, with its input; its history and timers go. */
int wf_store_new_run(wf_store *st, const char *id, int run, const char *input);

#endif /* WF_STORE_H */

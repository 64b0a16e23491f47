/*
 * wf_engine.h — the engine's private structures, shared by the files that make up the host:
 *   wf_engine.c  instances in memory, the ready queue, group commit, timers, recovery, cache
 *   wf_step.c    the resume driver: runs a coroutine to its next yield, replays history,
 *                checks determinism and journals commands
 *   wf_lua.c     the workflow Lua state: sandbox, loading workflow files, limits
 *   wf_action.c  the action registry and calls
 *   wf_attempt.c an action step's attempts: retries, timeouts, the breaker's verdicts
 *   wf_policy.c  action policies: defaults, checks, backoff arithmetic
 *   wf_breaker.c circuit breakers
 *   wf_http.c    the built-in action http.request (libcurl on the host's loop)
 *   wf_sched.c   schedules: firing cron schedules as instances, and their public functions
 *   wf_cron.c    cron expressions and time zones (wf_cron.h)
 *   wf_patch.c   ctx:patched: rolling a code change out to running instances
 *   wf_progress.c ctx:progress: an instance's progress, in its row
 *   wf_histsize.c the size of a history: the warning and the hard limit
 *   wf_outbox.c  the transactional outbox: ctx:emit, subscribers, the dispatcher
 *   wf_child.c   child workflows: starting, signalling, cancelling, reporting to the parent
 *   wf_api.c     the public functions of wfhost.h
 * Nothing here is visible to users of the library.
 */
#ifndef WF_ENGINE_H
#define WF_ENGINE_H

#include <lua.h>
#include <uv.h>

#include "wf_policy.h"
#include "wf_store.h"
#include "wfhost.h"

typedef enum {
  WF_ST_PENDING,
  WF_ST_RUNNING,
  WF_ST_WAITING,
  WF_ST_COMPLETED,
  WF_ST_FAILED,
  WF_ST_CANCELLED,
  WF_ST_SUSPENDED
} wf_status;

const char *wf_status_name(wf_status s);
int wf_status_final(wf_status s);

/* What a parked instance waits on: one command per thread (the main one, and the branches of
 * ctx:all / ctx:any). */
typedef enum { WF_PEND_NONE, WF_PEND_ACTION, WF_PEND_WAIT, WF_PEND_SLEEP, WF_PEND_CHILD } wf_pend_kind;

/* Event names the host writes for itself (users' names have no control characters): a child's
 * outcome for its parent (the prefix, then the child's id), and a cancellation request. */
#define WF_EVENT_CHILD "\x1f" "child:"
#define WF_EVENT_CANCEL "\x1f" "cancel"

/* An unconsumed event in an instance's inbox (a copy of the durable row). */
typedef struct wf_event {
  struct wf_event *next;
  int64_t id; /* the inbox row id: smaller is older */
  int64_t at;
  char *name;
  char *data; /* JSON */
} wf_event;

typedef struct wf_instance wf_instance;
typedef struct wf_action wf_action;

/* An action call in flight. Once the host stopped waiting for it (timed out, its branch
 * cancelled, the instance ended) it is abandoned: its completion is then dropped. */
struct wf_call {
  wf_host *host;        /* NULL once the host closed: the completion is then dropped */
  char *instance_id;
  int64_t seq;
  int attempt;
  char *name;
  char *params;
  char *key;
  int64_t deadline;
  size_t dl_idx;        /* its place in the host's deadline heap, or (size_t)-1 */
  int held;             /* wf_call_hold(): drain does not wait for it */
  int abandoned;        /* the host stopped waiting (timed out, withdrawn): its outcome is ignored */
  wf_abandon_fn abandon;
  void *abandon_ud;
  /* A blocking action runs on a worker thread; its completion is kept here until the loop
   * thread takes it (wf_action.c). */
  uv_work_t work;
  struct wf_action *action;
  int on_worker;
  int done;             /* the worker's outcome: 0 none, 1 ok, 2 failed */
  char *out;            /* result JSON, or the error message */
  char *err_type;
  wf_error_class err_class;
  int64_t retry_after;  /* -1: no hint */
  struct wf_call *next; /* in the host's list of calls in flight */
  struct wf_call *prev;
};

/* How an attempt ended, as handed to the engine. */
typedef struct wf_outcome_rec {
  int ok;
  char *result;         /* ok: the result JSON (owned) */
  char *type;           /* failure: error type, message (owned) */
  char *message;
  wf_outcome cls;       /* failure: transient, permanent (timeout and lost are the host's) */
  int64_t retry_after;  /* -1: none */
} wf_outcome_rec;

/* A command an instance waits on. */
typedef struct wf_pend {
  struct wf_pend *next;
  wf_pend_kind kind;
  int64_t seq;
  char *name;       /* action name, event names joined with '|', or a child's outcome event */
  char *params;     /* action params (JSON), or a child's id */
  int detached;     /* a child that outlives its parent */
  int64_t due;      /* sleep end or wait timeout, 0 if none; for an action, the attempt's
                       deadline while in flight, the retry's time while backing off */
  wf_call *call;    /* the action call in flight, if any */
  int has_result;   /* an action outcome arrived and awaits delivery */
  wf_outcome_rec out;
  int dispatch;     /* the action must be (re)invoked after the next commit */
  /* An action step's retry state (wf_attempt.c). */
  int attempt;      /* the attempt in flight, or the next one while backing off */
  int round_base;   /* attempts made before an operator's `wfhost retry` */
  int backing_off;  /* waiting for due to start the next attempt */
  int probe;        /* the attempt in flight is its breaker's half-open probe */
  int64_t first_at; /* when the step (or the operator's retry) began: the total timeout's base */
  wf_retry_policy pol;   /* the effective policy (non_retryable in nonretry) */
  char *nonretry;
  char *key;        /* the workflow's idempotency key, or NULL for "<id>:<seq>" */
  char *brk_key;    /* the breaker key taken from the params, or NULL */
  unsigned flags;   /* WF_ACTION_* of the action */
  struct wf_action *action; /* the registration that serves it (kept until the host closes) */
  char *last_type;  /* the last failure, the cause when attempts run out */
  char *last_msg;
  char *last_fail;  /* ... as journaled (JSON) */
  int timed_out;    /* the call in flight passed its deadline */
  int64_t started_at; /* when the attempt in flight was invoked */
  int final;        /* the step ended: 1 with a result, 2 with an error (final_json), which the
                       workflow receives when it next takes an outcome */
  char *final_json;
  int replay;       /* issued while replaying, its outcome in the history: nothing is armed */
} wf_pend;


struct wf_instance {
  char *id;
  char *workflow;
  int version;
  wf_status status;
  int64_t created_at;
  char *parent_id;   /* a child workflow's parent, or NULL */
  int run;           /* 1, then one more at each ctx:continue_as_new; 0 until the row is read */

  /* The live coroutine, anchored in the registry; co is NULL when not built. */
  lua_State *co;
  int co_ref;
  int ctx_ref;

  int64_t seq;  /* the last command sequence number issued */
  int64_t emit_seq; /* ctx:emit: the seq of the last emit, and how many since that seq (the */
  int emit_n;       /* message id is "<id>:<seq>:<n>"); reset with seq when it is rebuilt */
  int64_t pos;  /* the last history position written or loaded */

  /* Replay: the loaded history, and for each seq the index of its command and outcome
   * entries in it (-1 if none). Freed once the coroutine has caught up. */
  wf_history_entry *hist;
  size_t nhist;
  int64_t *cmd_at;
  int64_t *out_at;
  int64_t replay_max_seq;
  int replaying;

  /* The commands the instance waits on, in the order they were issued. */
  wf_pend *pends;
  wf_pend *spare;    /* a freed record kept for the next command */
  int64_t rp;        /* replay: the history index of the next outcome to deliver */
  char *saga_msg;    /* the main thread failed (or was cancelled) with this error, and the
                        compensations it registered run in a new main thread */
  int saga_cancel;
  int64_t fast_seq;  /* the main thread issued this command and blocks in the same yield: its
                        seq goes first in the values it is resumed with */
  int64_t *ignored;  /* seqs of withdrawn calls whose outcome arrived: journaled as ignored */
  size_t nignored;

  wf_event *inbox;
  wf_event **inbox_tail;

  char *input;       /* JSON */
  char *state;       /* state label or NULL */
  char *data;        /* ctx.data as last written, JSON */
  char *output;      /* JSON once completed */
  char *error;       /* failure / suspension text */
  double progress;   /* ctx:progress: 0 to 100, if has_progress */
  char *progress_msg; /* ... and its message, or NULL */
  wf_status row_status; /* status and waiting_for as the store has them: a row is written */
  char *row_wait;       /* only when they (or row_dirty fields) change */
  char *dry_report;  /* a replay check's verdict: NULL while it agrees, else the divergence */
  int dry_done;
  wf_status dry_status; /* the status the history ended in */

  unsigned loaded : 1;           /* row fields above are known (new, or read from the store) */
  unsigned is_new : 1;           /* no history yet: the next step starts it */
  unsigned row_dirty : 1;        /* the row must be written in this batch */
  unsigned row_new : 1;          /* created in this batch, its row not yet inserted (write_row) */
  unsigned cancel_requested : 1; /* cancellation not yet delivered to the coroutine */
  unsigned cancel_delivered : 1;
  unsigned retry_requested : 1;
  unsigned touched : 1;          /* written in the open batch (to undo if the commit fails) */
  unsigned in_ready : 1;
  unsigned in_lru : 1;
  unsigned dry : 1;              /* a replay check: nothing is written, nothing is invoked */
  unsigned has_progress : 1;     /* ctx:progress was called (progress is in the row) */
  unsigned has_children : 1;     /* this run started a child (issued or replayed): its end
                                    must look for children to cancel */

  wf_instance *ready_next;
  wf_instance *lru_prev, *lru_next;
  wf_instance *hnext;            /* hash chain */
  wf_instance *touched_next;
};

/* A timer in the wake-up heap. The durable timer is the store's row; this only schedules the
 * wake-up, and is checked against the instance when it fires. */
typedef struct wf_timer {
  int64_t due;
  uint64_t order; /* arming order: timers due at the same time fire first armed, first */
  int64_t seq;
  char *id;
} wf_timer;

/* A request made through the API, applied in the next batch. */
typedef enum { WF_SUB_START, WF_SUB_SIGNAL, WF_SUB_CANCEL, WF_SUB_RETRY } wf_sub_kind;
typedef struct wf_submit {
  struct wf_submit *next;
  struct wf_submit *hnext; /* a start, in the index of queued starts by id */
  wf_sub_kind kind;
  char *id;
  char *workflow;
  int version;
  char *name; /* event */
  char *data; /* input or event data */
  wf_done_fn done;
  void *ud;
} wf_submit;

/* A callback to run once the batch is durable. */
typedef struct wf_answer {
  wf_done_fn done;
  void *ud;
  char *id;
  int rc;
} wf_answer;

struct wf_action {
  struct wf_action *next;
  char *name;
  wf_action_fn fn;
  void *ud;
  wf_action_opts opts; /* retry.non_retryable and breaker.key_param point to the copies below */
  char *nonretry;      /* joined (wf_join_types) */
  char *key_param;
  /* A built-in's own breaker key from the params (malloc'd, or NULL), in place of key_param:
   * http.request keys its breakers by origin. */
  char *(*breaker_key)(wf_host *h, const char *params);
};

/* A circuit breaker (wf_breaker.c). */
enum { WF_BRK_CLOSED, WF_BRK_OPEN, WF_BRK_HALF_OPEN, WF_BRK_ISOLATED };
typedef struct wf_breaker {
  struct wf_breaker *hnext, *lru_prev, *lru_next, *dirty_next;
  uint64_t hash;
  char *action;
  char *key;
  int state;
  int probes;          /* half-open probes in flight */
  int64_t probe_until; /* ... until their deadlines at the latest */
  int64_t open_until;
  int dirty;           /* to write in this batch */
  int64_t written_at;
  struct {
    int64_t epoch;
    uint32_t calls, failures;
  } win[10];
} wf_breaker;

struct wf_host {
  wf_config cfg;
  char *db_path;
  wf_store *st;
  char errmsg[16384];

  /* Lua */
  lua_State *L;
  int mod_ref;          /* the wf_ctx module table */
  int base_ref;         /* the sandbox base environment */
  int defs_ref;         /* "name@version" and "name" -> definition */
  int modules_ref;      /* sandboxed require cache */
  char *workflows_dir;
  size_t mem_used;
  int mem_enforce;      /* refuse allocations past the limit (only while workflow code runs) */
  wf_instance *current; /* the instance whose coroutine is running */
  int trip;             /* 0, or why the running coroutine must stop: 1 budget, 2 memory */
  char trip_msg[600];   /* ... and the error it stops with */
  int reclaim;          /* a coroutine died of the memory limit: run a full collection */

  /* loop */
  uv_loop_t *loop;
  uv_loop_t own_loop;
  int owns_loop;
  int handles_open;
  uv_idle_t idle;
  uv_timer_t wake_timer;
  uv_timer_t poll_timer;
  int started;
  int recovered;        /* recovery at the first start is done */
  int stop_requested;
  int in_batch;
  int closing;

  /* instances */
  wf_instance **buckets;
  size_t nbuckets;
  size_t ninstances;
  size_t nlive; /* instances with a coroutine */
  wf_instance *ready_head, *ready_tail;
  wf_instance *lru_head, *lru_tail; /* parked live instances, least recently used first */
  wf_instance *touched_head, **touched_tail; /* in processing order: effects follow it */

  /* timers */
  wf_timer *heap;
  size_t nheap, capheap;
  uint64_t timers_armed;
  int64_t armed_due;

  /* requests and effects */
  wf_submit *sub_head, **sub_tail;
  wf_submit **starts;       /* queued starts by id (a start is answered before it is applied) */
  size_t nstarts, nstart_buckets;
  wf_answer *answers;
  size_t nanswers, capanswers;
  int64_t last_event_id;
  int ext_dirty; /* another process may have written requests */
  uint64_t ext_checked_at; /* uv_now() of the last look for them in a drain */
  int io_backoff_ms;
  int batch_rc;       /* the first store error in the open batch: the batch is rolled back */
  int recover_needed; /* a batch was rolled back: rescan the store before the next one */
  uv_timer_t backoff_timer;
  uv_timer_t checkpoint_timer; /* checkpoints the WAL once the host is idle */

  /* actions */
  wf_action *actions;
  wf_call *calls; /* in flight */
  size_t calls_waited; /* in flight and not held: wf_host_drain waits for these */
  size_t workers;      /* blocking calls on the thread pool */
  wf_call **dl;        /* calls in flight by deadline (a min-heap) */
  size_t ndl, capdl;
  uv_timer_t dl_timer;
  wf_action_stats stats;
  wf_observer_fn observer;
  void *observer_ud;
  int64_t spread_at;   /* overdue retries spread over a short window (wf_attempt.c) */
  int spread_n;
  void *http;          /* the http.request action's client, made at its first call (wf_http.c) */

  /* the outbox's subscribers and dispatcher (wf_outbox.c) */
  struct wf_outbox *outbox;

  /* circuit breakers */
  wf_breaker **brk_buckets;
  size_t brk_nbuckets, brk_count;
  wf_breaker *brk_lru_head, *brk_lru_tail;
  wf_breaker *brk_dirty;

  /* schedules (wf_sched.c) */
  struct wf_sched *scheds; /* as last read from the store, advanced by each batch that fires */
  size_t nscheds;
  int64_t sched_next;      /* the earliest next firing, 0: none */
  uv_timer_t sched_timer;  /* wakes the loop for it */

  uint64_t rng[4];
  uint64_t id_rng[4];
  void *hist_warned; /* ids warned about their history size in this run (wf_histsize.c) */
};

/* ---- wf_api.c ---- */
int wf_fail(wf_host *h, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void wf_log(wf_host *h, wf_log_level lvl, const char *instance, const char *fields_json,
            const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* "debug", "warn", "error"; anything else (or NULL) is info. */
wf_log_level wf_log_level_parse(const char *s);
char *wf_strdup(const char *s); /* NULL-safe; aborts on out of memory like the rest of the host */
void *wf_xmalloc(size_t n);
void *wf_xrealloc(void *p, size_t n);
int64_t wf_now(wf_host *h);
uint64_t wf_rand64(wf_host *h);
/* A version 4 UUID from a generator's state: h->rng for ctx:uuid() (seedable for tests),
 * h->id_rng for instance ids (always seeded by the OS, so a restarted host never repeats). */
void wf_uuid(uint64_t rng[4], char out[37]);
/* A version 7 UUID: the time in ms, then random bits. Ids made in order sort in order, so new
 * instances' rows and history land next to each other in the store's B-trees. */
void wf_uuid7(uint64_t rng[4], int64_t ms, char out[37]);
int wf_valid_id(const char *id);
/* Returns s as a quoted JSON string (malloc'd). */
char *wf_json_quote(const char *s);
/* Formats a time in ms as "2026-11-23T16:27:22.123Z". */
void wf_format_time(int64_t ms, char out[32]);
int wf_status_parse(const char *s);

/* ---- wf_lua.c ---- */
int wf_lua_open(wf_host *h);
void wf_lua_close(wf_host *h);
int wf_lua_load_dir(wf_host *h, const char *dir, int check_only);
/* Pushes the definition's run function for workflow@version (version 0: newest) and sets
 * *version; returns 0 if not loaded. */
int wf_lua_push_def(wf_host *h, const char *workflow, int *version);
int wf_lua_has_workflow(wf_host *h, const char *workflow);
/* Calls module function `fn` with nargs args on L's stack, protected; 0 on success with
 * nres results, else the message is on the stack. */
int wf_lua_callmod(wf_host *h, const char *fn, int nargs, int nres);
/* normalize(v, null): turns cjson's decoded value into what workflows get (whole numbers as
 * integers, null fields dropped); a lua_CFunction handed to wf_ctx.lua. */
int wf_lua_normalize(lua_State *L);
/* Arms the instruction budget for the coroutine about to run a step. */
void wf_lua_arm_budget(wf_host *h, lua_State *co);
/* The value of a top-level field of a JSON object as text (a string's contents, a number or
 * boolean as written), malloc'd; NULL if absent, of another type, or not an object. */
char *wf_json_get(wf_host *h, const char *json, const char *field);
/* Checks JSON text; 0 if valid, else writes a message to err. */
int wf_json_check(wf_host *h, const char *json, char *err, size_t errlen);
/* Names, versions and (if sources is not NULL) source files of the loaded workflows (for the
 * catalog); the caller frees each string and the arrays. */
size_t wf_lua_workflow_names(wf_host *h, char ***names, int **versions, char ***sources);
/* A schedule declared by a workflow definition (its newest loaded version). */
typedef struct wf_def_schedule {
  char *workflow, *cron, *timezone /* NULL: UTC */, *catch_up, *overlap, *input /* JSON object */;
} wf_def_schedule;
/* The schedules the loaded definitions declare, by workflow name; free with wf_lua_free_def_schedules. */
size_t wf_lua_def_schedules(wf_host *h, wf_def_schedule **out);
void wf_lua_free_def_schedules(wf_def_schedule *list, size_t n);
/* Checks that json is a JSON object without a top-level field `key`: 0, else -1 with a message. */
int wf_json_object_without(wf_host *h, const char *json, const char *key, char *err, size_t errlen);

/* ---- wf_engine.c ---- */
int wf_engine_init(wf_host *h);
void wf_engine_shutdown(wf_host *h);
int wf_engine_start(wf_host *h);
/* Records the loaded workflows in the store's catalog, for clients. */
void wf_engine_store_catalog(wf_host *h);
void wf_engine_submit(wf_host *h, wf_submit *s);
/* Creates a pending instance in the open batch and makes it ready (as an applied start):
 * *created (may be NULL) is 0 if the id existed, and nothing changed then. */
int wf_engine_create(wf_host *h, const char *id, const char *workflow, int version, const char *input,
                     int *created);
/* ... a child of parent_id, started by its command parent_seq. */
int wf_engine_create_child(wf_host *h, const char *id, const char *workflow, int version, const char *input,
                           const char *parent_id, int64_t parent_seq, int detached, int *created);
/* What ends the keys a run makes (default action idempotency keys, child ids, outbox message
 * ids): "" in the first run, "@<run>" after ctx:continue_as_new. Read from the right, a key
 * "<id>:<seq>@<run>" cannot be another instance's or another run's. */
const char *wf_run_suffix(const wf_instance *in, char buf[16]);
/* An action step's default idempotency key, "<id>:<seq>[@<run>]", in buf (WF_ID_MAX + 48). */
const char *wf_default_key(const wf_instance *in, int64_t seq, char *buf, size_t n);
/* Adds an event to an instance's inbox in the open batch and wakes the instance. */
int wf_engine_add_event(wf_host *h, const char *id, const char *name, const char *data);
/* The start queued for id and not yet applied, or NULL. */
wf_submit *wf_engine_queued_start(wf_host *h, const char *id);
wf_instance *wf_engine_find(wf_host *h, const char *id);
void wf_engine_ready(wf_host *h, wf_instance *in);
void wf_engine_kick(wf_host *h);
/* Records the result of a store write in the open batch: the first error rolls the batch back. */
void wf_engine_store_rc(wf_host *h, int rc);
/* Writes the instance's row if anything in it changed in this batch; inserts it if it was
 * created in this batch (row_new). The batch does this for every instance it touched. */
void wf_engine_write_row(wf_host *h, wf_instance *in);
/* Journals an entry for the instance in the open batch. */
void wf_engine_history(wf_host *h, wf_instance *in, int64_t seq, const char *kind, const char *name,
                       const char *data);
/* Loads the instance's unconsumed events from the store into its in-memory inbox. */
int wf_engine_load_inbox(wf_host *h, wf_instance *in);
void wf_engine_add_timer(wf_host *h, wf_instance *in, int64_t seq, int64_t due);
int wf_engine_busy(wf_host *h);
/* wf_host_stop(): on the host's own loop, makes wf_host_run() return after the work at hand
 * is committed; on the application's loop, stops the host's handles and leaves the loop. */
void wf_engine_stop(wf_host *h);
/* Makes ready now what is due: instances whose timers fell due (a clock may jump, as a
 * virtual one does) and requests other handles wrote to the database. */
void wf_engine_poll(wf_host *h, int look);
/* The instance's pending commands: added at the end (in issue order), found by seq, removed
 * (freed; a call in flight must have been dealt with). */
wf_pend *wf_pend_add(wf_instance *in, wf_pend_kind kind, int64_t seq);
wf_pend *wf_pend_find(wf_instance *in, int64_t seq);
void wf_pend_remove(wf_instance *in, wf_pend *p);
/* Ends every pending command: calls in flight are abandoned (their outcomes dropped). */
void wf_pend_clear(wf_host *h, wf_instance *in);
/* 1 if an action call of the instance is in flight. */
int wf_pend_has_call(const wf_instance *in);
/* Frees an instance that is not (or no longer) in the instance table. */
void wf_instance_release(wf_host *h, wf_instance *in);
/* Takes the oldest inbox event matching one of the '|'-joined names, or NULL. */
wf_event *wf_inbox_take(wf_instance *in, const char *names);
/* ... the oldest event named exactly name (which may hold a '|'). */
wf_event *wf_inbox_take_exact(wf_instance *in, const char *name);
void wf_event_free(wf_event *ev);
/* Delivered by wf_action.c when a call completes; takes the outcome's strings. */
void wf_engine_call_done(wf_host *h, wf_call *c, wf_outcome_rec *o);
/* A call passed its deadline (wf_action.c). */
void wf_engine_call_timeout(wf_host *h, wf_call *c);

/* ---- wf_step.c ---- */
/* Runs the instance's coroutine until it parks, finishes or fails, delivering any outcome
 * that is ready. Builds (or rebuilds by replay) the coroutine first if needed. */
void wf_step_advance(wf_host *h, wf_instance *in);
void wf_step_drop_coroutine(wf_host *h, wf_instance *in);
/* Suspends the instance for an operator with a message (journaled, logged, shown). */
void wf_step_suspend(wf_host *h, wf_instance *in, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Replays an instance against the loaded code without effects (see wf_replay_check). */
int wf_step_replay_check(wf_host *h, const char *id, char **report);
void wf_step_free_replay(wf_instance *in);
/* The C function behind `note` (state labels, log lines, print). */
int wf_step_note(lua_State *L);

/* ---- wf_action.c ---- */
wf_action *wf_action_find(wf_host *h, const char *name);
/* The policy that applies to calls of name (its own action's, or the fallback's, or the
 * defaults). Either output may be NULL. */
void wf_action_policy_of(wf_host *h, const char *name, wf_retry_policy *r, wf_breaker_policy *b);
void wf_action_register_builtins(wf_host *h);
void wf_action_dispatch(wf_host *h, wf_instance *in, wf_pend *p);
/* Times out the calls past their deadline; *next (may be NULL) gets the earliest deadline
 * left, or 0. */
void wf_action_expire(wf_host *h, int64_t *next);
/* The host stops waiting for the call: its completion will be dropped. */
void wf_action_abandon(wf_host *h, wf_call *c);
void wf_action_detach_all(wf_host *h);
void wf_action_free_all(wf_host *h);
void wf_outcome_free(wf_outcome_rec *o);

/* ---- wf_breaker.c ---- */
const char *wf_breaker_state_name(int s);
wf_breaker *wf_breaker_get(wf_host *h, const char *action, const char *key, const wf_breaker_policy *p);
/* 1 if a call may start now (*probe: it is a half-open probe); else 0 and *retry_at tells
 * when the breaker may let one through. State changes are journaled for in at seq. */
int wf_breaker_allow(wf_host *h, wf_breaker *b, const wf_breaker_policy *p, int64_t now, int64_t probe_until,
                     int *probe, int64_t *retry_at, wf_instance *in, int64_t seq);
void wf_breaker_record(wf_host *h, wf_breaker *b, const wf_breaker_policy *p, int64_t now, int outcome,
                       int probe, wf_instance *in, int64_t seq);
void wf_breaker_set(wf_host *h, const char *action, const char *key, int isolate);
void wf_breaker_write_dirty(wf_host *h);
int wf_breaker_load(wf_host *h);
int wf_breaker_list(wf_host *h, wf_breaker_info **out, size_t *n);
void wf_breaker_free_all(wf_host *h);

/* ---- wf_attempt.c ---- */
/* The policy of one call: the action's, with the workflow's per-call options over it. */
typedef struct wf_call_opts {
  struct wf_action *action; /* the registration that serves the call */
  wf_retry_policy pol;
  char *nonretry;
  char *key;
} wf_call_opts;
/* Fills o for a call of action a (registered); idx: the normalised options table on co's
 * stack, or 0. Returns -1 with a message in err if the result is not a valid policy. */
int wf_attempt_opts(wf_action *a, lua_State *co, int idx, wf_call_opts *o, char *err, size_t n);
void wf_call_opts_free(wf_call_opts *o);
/* The workflow calls an action (live, p new): journals it and starts attempt 1. Takes params
 * and o's strings. Returns -1, or 0 if the step already ended (the outcome waits in p). */
int wf_attempt_call(wf_host *h, wf_instance *in, wf_pend *p, const char *name, char *params, wf_call_opts *o);
/* The action step p was pending when the instance was last in memory: rebuilds its retry
 * state from the history and carries on. Returns as wf_attempt_call. */
int wf_attempt_rearm(wf_host *h, wf_instance *in, wf_pend *p, const wf_history_entry *cmd, wf_call_opts *o);
/* A parked action step: journals and pushes its final outcome (returns the number of values),
 * or handles a timeout / retry time / failure and stays parked (0), or the instance ended
 * (-1, suspended). */
int wf_attempt_deliver(wf_host *h, wf_instance *in, wf_pend *p);
/* The call in flight (if any) ends because its thread or the instance is cancelled. */
void wf_attempt_cancel(wf_host *h, wf_instance *in, wf_pend *p);
/* Journals an entry of the step at seq and tells the observer. */
void wf_attempt_journal(wf_host *h, wf_instance *in, int64_t seq, const char *kind, const char *name,
                        const char *data);
void wf_attempt_observe(wf_host *h, const char *kind, const char *instance, int64_t seq, const char *action,
                        const char *data);
/* The waiting_for text of an action step. */
void wf_attempt_describe(const wf_pend *p, char *buf, size_t n);

/* ---- wf_sched.c ---- */
void wf_sched_init(wf_host *h);
/* Writes the schedules the loaded definitions declare to the store (and removes those of
 * definitions that no longer declare one), in a transaction of its own. */
void wf_sched_sync_definitions(wf_host *h);
/* Reads the schedules from the store (in the open batch, or on its own) and arms the wake-up. */
void wf_sched_load(wf_host *h);
/* Starts (or skips) the firings that are due, in the open batch, advancing each schedule. */
void wf_sched_fire(wf_host *h);
/* 1 if a firing is due now. */
int wf_sched_due(wf_host *h);
void wf_sched_arm(wf_host *h);
void wf_sched_free_all(wf_host *h);
/* Lua: schedule_check(cron, timezone) -> nil, or the message of what is wrong (workflow.define). */
int wf_sched_l_check(lua_State *L);

/* ---- wf_patch.c, wf_progress.c: `note` kinds ---- */
/* note(_, "patched", change_id): pushes whether the running instance takes the new code path
 * (journaling the patch entry when it is live); returns 1. Raises on a bad change id. */
int wf_patch_note(wf_host *h, wf_instance *in, lua_State *L);
/* note(_, "progress", percent, message): sets the instance's progress; returns 0. */
int wf_progress_note(wf_host *h, wf_instance *in, lua_State *L);

/* ---- wf_histsize.c ---- */
/* After an entry was journaled: warns once per instance per run past cfg.history_warn. */
void wf_histsize_grew(wf_host *h, wf_instance *in);
/* 1 if the history holds cfg.history_limit entries: the instance may journal no more. */
int wf_histsize_full(wf_host *h, const wf_instance *in);
/* The message an instance fails with at the limit. */
void wf_histsize_message(wf_host *h, const wf_instance *in, char *buf, size_t n);
/* Raises that message in L if the history is full (for a note about to journal). */
void wf_histsize_check_note(wf_host *h, wf_instance *in, lua_State *L);
void wf_histsize_free(wf_host *h);

/* ---- wf_http.c ---- */
/* Registers the built-in action http.request. */
void wf_http_register(wf_host *h);
/* Ends the requests in flight and frees the client; before wf_engine_shutdown(). */
void wf_http_close(wf_host *h);

/* ---- wf_child.c ---- */
/* The parent's event name for a child's outcome, and the child command's journal data (malloc'd). */
char *wf_child_event_name(const char *child_id);
char *wf_child_record(const char *child_id, int detached);
/* Starts a child in the open batch for the parent's command seq. Returns 0, or -1 with a
 * message for the workflow in err (nothing written). */
int wf_child_start(wf_host *h, wf_instance *parent, int64_t seq, const char *workflow, const char *input,
                   const char *child_id, int detached, char *err, size_t errlen);
/* Asks a child that has not ended to cancel (once); returns 1, or 0 if it has ended. */
int wf_child_cancel(wf_host *h, const char *child_id);
/* An event for a child that has not ended; returns 1 if sent, 0 if the child has ended. */
int wf_child_signal(wf_host *h, const char *child_id, const char *event, const char *data);
/* The parent's thread waiting for the child of p was cancelled: the child no longer reports to
 * the parent, and is cancelled unless detached. */
void wf_child_withdrawn(wf_host *h, wf_instance *parent, const wf_pend *p);
/* The instance's run ends: its children stop reporting, attached ones are cancelled. */
void wf_child_release(wf_host *h, wf_instance *in);
/* The instance ended: as wf_child_release, and a child reports its outcome to its parent. */
void wf_child_ended(wf_host *h, wf_instance *in);

/* ---- wf_outbox.c ---- */
/* note(_, "emit", topic, payload_json) from ctx:emit: writes the message in the open batch
 * (nothing while replaying: it is durable already). Returns its results on L: the message id,
 * or nil and a message for a bad topic or payload. */
int wf_outbox_emit(wf_host *h, wf_instance *in, lua_State *L);
/* The host's outbox state and its timer; wf_outbox_close() closes the timer (before the
 * engine runs the loop to finish closing), wf_outbox_free() frees the rest. */
void wf_outbox_init(wf_host *h);
void wf_outbox_close(wf_host *h);
void wf_outbox_stop(wf_host *h);
void wf_outbox_free(wf_host *h);
/* Writes the outcomes of deliveries, routing and operators' retries in the open batch. */
void wf_outbox_write(wf_host *h);
/* The batch is durable: forgets what it wrote. */
void wf_outbox_committed(wf_host *h);
/* Delivers what is due: after a commit (once its effects are released) and on its timer. */
void wf_outbox_dispatch(wf_host *h);
/* 1 if the outbox has something to write in a batch. */
int wf_outbox_pending(wf_host *h);
/* 1 if wf_host_drain() must go on for the outbox: writes, deliveries in flight, due work. */
int wf_outbox_busy(wf_host *h);
/* Delivers what fell due (a virtual clock may jump). */
void wf_outbox_poll(wf_host *h);
/* The earliest time the dispatcher has work (a retry, a delivery's deadline), or 0. */
int64_t wf_outbox_next_wake(wf_host *h);
/* A client's `outbox retry` request: "<msg id>" or "<msg id>\x1f<subscriber>". */
void wf_outbox_request(wf_host *h, const char *id);

#endif /* WF_ENGINE_H */

/*
 * wfhost.h — the one public interface of wfhost, a durable workflow host.
 *
 * wfhost runs workflows written in Lua 5.4 as coroutines. Every command a workflow
 * issues (an action, a wait for an event, a timer) is journaled in an SQLite database
 * before anything outside the host can see its effect, so an instance survives a crash
 * or a restart and resumes exactly where it was.
 *
 * A handle (wf_host) is opened in one of two modes:
 *   - WF_MODE_HOST: the engine. It loads workflow code, registers actions and runs the
 *     instances on a libuv loop (its own, or the application's). One host process may run
 *     on a database at a time; a second one gets WF_BUSY.
 *   - WF_MODE_CLIENT: a light handle for another process (the `wfhost` command uses it).
 *     It writes start/signal/cancel requests durably to the database, where the running
 *     host picks them up, and reads instances and their history.
 *
 * Conventions:
 *   - Functions return WF_OK (0) or one of the codes below; wf_errmsg() gives a sentence
 *     describing the last failure on that handle.
 *   - Strings passed in are copied; the host never keeps a caller's pointer.
 *   - JSON is passed as NUL-terminated UTF-8 text.
 *   - Every function must be called from the thread that runs the host's loop.
 *   - Times are milliseconds since the Unix epoch (UTC).
 */
#ifndef WFHOST_H
#define WFHOST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WFHOST_VERSION "0.1.0"

/* Result codes. */
enum {
  WF_OK = 0,
  WF_ERROR = 1,    /* generic failure; see wf_errmsg() */
  WF_INVALID = 2,  /* bad argument: malformed JSON, bad id, payload too large, ... */
  WF_NOTFOUND = 3, /* unknown workflow, instance or action */
  WF_STATE = 4,    /* the instance is in a state that refuses the request (e.g. finished) */
  WF_BUSY = 5,     /* the database is held by another host process */
  WF_IO = 6,       /* the database could not be read or written (disk full, I/O error) */
  WF_SCHEMA = 7,   /* the database was written by a newer wfhost */
  WF_MISUSE = 8,   /* the call is not allowed on this handle or in this state */
  WF_LUA = 9       /* workflow code failed to load */
};

typedef struct wf_host wf_host;
typedef struct uv_loop_s uv_loop_t;

typedef enum { WF_MODE_HOST = 0, WF_MODE_CLIENT = 1 } wf_mode;

typedef enum {
  WF_DURABILITY_FULL = 0,  /* synchronous=FULL: a committed step survives power loss (default) */
  WF_DURABILITY_NORMAL = 1 /* synchronous=NORMAL: survives a process crash, may lose the last
                              commits on power loss; much faster on slow disks */
} wf_durability;

typedef enum { WF_LOG_DEBUG = 0, WF_LOG_INFO = 1, WF_LOG_WARN = 2, WF_LOG_ERROR = 3 } wf_log_level;

/* A log line. instance is NULL for host messages. fields_json is a JSON object or NULL. */
typedef void (*wf_log_fn)(void *ud, wf_log_level level, const char *instance, const char *msg,
                          const char *fields_json);

/* A wall clock in milliseconds since the epoch; tests inject a virtual one. */
typedef int64_t (*wf_clock_fn)(void *ud);

typedef struct wf_config {
  wf_mode mode;               /* WF_MODE_HOST (default) or WF_MODE_CLIENT */
  wf_durability durability;   /* default WF_DURABILITY_FULL */
  uv_loop_t *loop;            /* run on this loop; NULL: the host creates and owns one */
  int cache_size;             /* live coroutines kept in memory; 0: 10000 */
  int64_t instruction_budget; /* Lua VM instructions in one step of an instance (from one park
                                 to the next); 0: 100 million */
  size_t memory_limit;        /* bytes for the whole workflow Lua state; 0: 1 GiB */
  size_t max_payload;         /* largest input/event/result JSON in bytes; 0: 1 MiB */
  int poll_interval_ms;       /* how often a host checks for requests from other processes; 0: 10 */
  wf_log_fn log;              /* NULL: text lines on stderr */
  void *log_ud;
  wf_log_level log_level;     /* lines below this level are dropped; wf_config_init: WF_LOG_INFO */
  wf_clock_fn clock;          /* NULL: the real clock */
  void *clock_ud;
  uint64_t seed;              /* 0: seed ctx:random() and ctx:uuid() from the OS */
  int64_t history_warn;       /* history entries of one instance past which the host warns (a
                                 log line and a history_warning entry, once per instance per
                                 host run); 0: 10000 */
  int64_t history_limit;      /* history entries past which an instance fails instead of
                                 journaling more (ctx:continue_as_new keeps a long-running
                                 workflow under it); 0: 100000 */
} wf_config;

/* Initialises cfg to the defaults. */
void wf_config_init(wf_config *cfg);

/* Opens (creating if needed) the database at db_path and returns a handle in *out, also on
 * failure (so wf_errmsg() can tell why; close it with wf_host_close()). cfg may be NULL for
 * the defaults. Returns WF_BUSY if another host runs on the database, WF_SCHEMA if it was
 * written by a newer wfhost, WF_IO if it cannot be opened. */
int wf_host_open(const char *db_path, const wf_config *cfg, wf_host **out /* OUT */);

/* Stops the host if running, closes every handle it owns and frees it. Requests already
 * accepted (a wf_start() whose done() has not been called yet, ...) are committed and answered
 * in a last batch before the handle goes. Other work that was not committed is not lost: it is
 * redone from the database by the next host. NULL is a no-op.
 * On the application's loop, call it outside the loop's callbacks (after uv_run returns):
 * it runs that loop once without blocking (UV_RUN_NOWAIT) to finish closing its handles.
 * Action calls still in flight may be completed afterwards; their results are dropped. */
void wf_host_close(wf_host *h);

/* The message for the last failure on h: never NULL, valid until the next call on h. */
const char *wf_errmsg(const wf_host *h);

/* A short English name for a result code ("not found", ...). */
const char *wf_strerror(int rc);

/* ---- Workflow code (host mode) ---------------------------------------------------------- */

/* Loads every `*.lua` file directly in dir as a workflow definition; files in
 * subdirectories are helper modules for the sandboxed `require`. Several versions of a
 * workflow load side by side, one per file (e.g. order@1.lua, order@2.lua: a file named
 * NAME@VERSION.lua must define that name and version); new instances start on the newest,
 * running ones keep theirs. Definitions replace those of the same name and version. Returns WF_LUA with every file:line problem in wf_errmsg()
 * if any file fails (nothing from dir is loaded then). */
int wf_load_dir(wf_host *h, const char *dir);

/* Checks the workflow files in dir without starting any instance: syntax, that each file
 * returns a definition, duplicate names. Each file's top-level code (and the modules it
 * requires) runs, in the sandbox and under the limits, as when loading. Returns WF_OK, or WF_LUA with one line per problem
 * ("file:line: message") in wf_errmsg(). Works in both modes. */
int wf_check_dir(wf_host *h, const char *dir);

/* ---- Actions (host mode) ---------------------------------------------------------------- */

typedef struct wf_call wf_call;

/* An action. It must complete the call exactly once, with wf_call_ok() or wf_call_fail(),
 * before returning or later from the loop thread (a WF_ACTION_BLOCKING action: before
 * returning, on its worker thread). Until then the call's strings stay valid. */
typedef void (*wf_action_fn)(wf_call *call, void *ud);

/* How a failure is classed: a transient one may succeed if tried again (it is retried and
 * counts as a failure for the circuit breaker); a permanent one will not (it is raised in
 * the workflow at once, and counts as a breaker success: the dependency answered). */
typedef enum { WF_PERMANENT = 0, WF_TRANSIENT = 1 } wf_error_class;

typedef enum { WF_BACKOFF_EXPONENTIAL = 0, WF_BACKOFF_CONSTANT = 1, WF_BACKOFF_LINEAR = 2 } wf_backoff;
typedef enum { WF_JITTER_FULL = 0, WF_JITTER_EQUAL = 1, WF_JITTER_NONE = 2 } wf_jitter;

/* The durable retry of one action step. With n failed attempts, the delay before the next is
 * raw = initial (constant), initial * n (linear), initial * multiplier^(n-1) (exponential);
 * nominal = min(max_delay, raw); then nominal (jitter none), r * nominal (full) or
 * nominal * (1 + r) / 2 (equal), r uniform in [0, 1). A retry-after hint from the action
 * replaces it. The chosen time is persisted: a backoff survives a restart. */
typedef struct wf_retry_policy {
  int max_attempts;           /* counts the first call; 1: no retry; 0: unlimited (needs
                                 total_timeout_ms); default 3 */
  wf_backoff backoff;         /* default exponential */
  int64_t initial_delay_ms;   /* default 1000 */
  double multiplier;          /* >= 1; default 2.0 */
  int64_t max_delay_ms;       /* 0: 100 x initial_delay_ms */
  wf_jitter jitter;           /* default full */
  const char *const *non_retryable; /* NULL-terminated error types never retried, or NULL */
  int64_t attempt_timeout_ms; /* the host gives up on an attempt after this; default 10000 */
  int64_t total_timeout_ms;   /* the whole step, all attempts and delays; 0: none */
  int suspend_on_exhaustion;  /* 1: when retries are exhausted, suspend the instance for an
                                 operator (`wfhost retry ID`) instead of raising the error */
} wf_retry_policy;

/* A circuit breaker per action (or per action and key). It counts outcomes over a sliding
 * window of sampling_duration_ms in 10 buckets and opens when, at a failure, at least
 * min_throughput calls were seen and failures / calls >= failure_ratio. Open, it rejects
 * calls without invoking the action for break_duration_ms; then half_open_max_calls probes
 * are let through: a probe failure opens it again, a success closes it. */
typedef struct wf_breaker_policy {
  int enabled;                  /* default 1 */
  double failure_ratio;         /* (0, 1]; default 0.5 */
  int min_throughput;           /* >= 2; default 20 */
  int64_t sampling_duration_ms; /* >= 2 x attempt timeout; default 30000 */
  int64_t break_duration_ms;    /* default 5000 */
  int half_open_max_calls;      /* default 1 */
  const char *key_param;        /* NULL: one breaker per action; else the name of a top-level
                                   params field whose value selects the breaker (a host, a
                                   tenant), each key its own breaker */
  int max_keys;                 /* keyed breakers kept per action, least recently used
                                   dropped first; default 1000 */
} wf_breaker_policy;

#define WF_ACTION_BLOCKING 0x1    /* run on libuv's thread pool, not the loop thread */
#define WF_ACTION_AT_MOST_ONCE 0x2 /* never invoked again after an attempt whose outcome is
                                      unknown (in flight at a crash, or timed out): the instance
                                      is suspended with "outcome unknown" for an operator */

typedef struct wf_action_opts {
  unsigned flags; /* WF_ACTION_* */
  wf_retry_policy retry;
  wf_breaker_policy breaker;
} wf_action_opts;

/* Initialises opts to the defaults above. */
void wf_action_opts_init(wf_action_opts *opts);

/* Registers (or replaces) an action. name: letters, digits, '_' and '.'; or "*" for a fallback
 * invoked for every action name that has no function of its own (wf_call_action() tells which:
 * a test kit mocking every action, or an application routing actions to a remote service).
 * opts: NULL for the defaults. An invalid policy is refused with WF_INVALID and a message
 * naming the field. */
int wf_register_action(wf_host *h, const char *name, wf_action_fn fn, void *ud,
                       const wf_action_opts *opts);

const char *wf_call_action(const wf_call *c);   /* the action's name */
const char *wf_call_params(const wf_call *c);   /* JSON */
const char *wf_call_instance(const wf_call *c); /* the calling instance's id */
/* The idempotency key, "<instance id>:<seq>" (or the workflow's own key option): identical
 * on every attempt of the same step, including one repeated after a crash. */
const char *wf_call_key(const wf_call *c);
int wf_call_attempt(const wf_call *c);          /* 1 for the first attempt */
/* When the host stops waiting for this attempt (ms since the epoch): the attempt timeout, or
 * the step's total timeout if that comes first. Pass it on to what the action calls. */
int64_t wf_call_deadline(const wf_call *c);
wf_host *wf_call_host(const wf_call *c);

/* Tells wf_host_drain() not to wait for this call: the application completes it at a time of
 * its choosing, outside the loop's own work (a test holding a call to order a race). */
void wf_call_hold(wf_call *c);

/* Called on the loop thread when the host stops waiting for a call (its attempt timed out,
 * the instance was cancelled, the host is closing): the action should abort its work. It must
 * still complete the call; the outcome is then dropped. */
typedef void (*wf_abandon_fn)(wf_call *c, void *ud);
void wf_call_on_abandon(wf_call *c, wf_abandon_fn fn, void *ud);

/* Completes the call with a JSON result (NULL means JSON null). The call is freed. */
void wf_call_ok(wf_call *c, const char *result_json);

/* Completes the call with an error. type: a short machine-readable word ("declined",
 * "http_503"), matched by the policy's non_retryable list; cls: whether trying again could
 * succeed. The call is freed. */
void wf_call_fail(wf_call *c, const char *type, const char *message, wf_error_class cls);

/* A transient failure with a hint from the dependency (an HTTP Retry-After): the next attempt
 * starts retry_after_ms from now instead of after the policy's backoff. */
void wf_call_fail_after(wf_call *c, const char *type, const char *message, int64_t retry_after_ms);

/* ---- Observing actions ------------------------------------------------------------------ */

/* What happens to action steps, as it is journaled in the instance's history:
 *   attempt          an attempt starts (data: {"attempt":n})
 *   attempt_failed   an attempt ended in a failure (data: attempt, class, type, message)
 *   retry_scheduled  the next attempt is due at a time (data: attempt, at, delay_ms, reason)
 *   rejected         the circuit is open: the attempt did not start (data: attempt, open_until)
 *   exhausted        no attempt left, or past the total timeout (data: attempts, type, message)
 *   action_lost      an attempt was in flight when the previous host stopped
 *   outcome_unknown  the same for an at-most-once action: the instance is suspended
 *   breaker          a circuit breaker changed state (data: key, from, to, calls, failures,
 *                    open_until)
 *   action_result    the step succeeded (data: the result)
 *   action_error     the step failed: the error the workflow receives (data: code, type,
 *                    message, attempts, retryable, cause)
 * instance is the step's instance (for a breaker change, the one whose call changed it, or NULL
 * for an operator's isolate or close). */
typedef struct wf_action_event {
  const char *kind;
  const char *instance;
  int64_t seq;
  const char *action;
  const char *data_json;
  int64_t at;
} wf_action_event;
typedef void (*wf_observer_fn)(void *ud, const wf_action_event *ev);

/* Sets (or with NULL clears) the observer. It is called on the loop thread while the batch
 * that journals the event is written; a batch that fails to commit is redone, so an event
 * may be observed twice. It must not call back into the host. */
void wf_set_observer(wf_host *h, wf_observer_fn fn, void *ud);

/* How attempts ended, by class; retries by reason. */
typedef enum {
  WF_OUTCOME_OK = 0, WF_OUTCOME_TRANSIENT, WF_OUTCOME_TIMEOUT, WF_OUTCOME_PERMANENT,
  WF_OUTCOME_CANCELLED, WF_OUTCOME_LOST, WF_OUTCOME_COUNT
} wf_outcome;
const char *wf_outcome_name(wf_outcome o); /* "ok", "transient", ... */

typedef struct wf_action_stats {
  uint64_t attempts[WF_OUTCOME_COUNT];    /* attempts ended, by outcome */
  uint64_t attempt_ms[WF_OUTCOME_COUNT];  /* their summed durations */
  uint64_t attempt_max_ms[WF_OUTCOME_COUNT];
  uint64_t retries_transient, retries_timeout, retries_lost, retries_circuit_open;
  uint64_t rejections;  /* calls refused by an open circuit */
  uint64_t exhausted;   /* steps that ran out of attempts or time */
  uint64_t breaker_opened, breaker_half_opened, breaker_closed;
  uint64_t in_flight;   /* calls out now */
  uint64_t breakers_open; /* breakers open, half-open or isolated now */
} wf_action_stats;

/* Counters since the host opened. */
void wf_action_stats_get(wf_host *h, wf_action_stats *out /* OUT */);

/* A breaker's state. */
typedef struct wf_breaker_info {
  char *action;
  char *key;           /* "" for an action's only breaker */
  char *state;         /* closed, open, half_open, isolated */
  int64_t calls;       /* outcomes in the sampling window */
  int64_t failures;
  double failure_ratio;
  int64_t open_until;  /* while open, else 0 */
  int64_t updated_at;
} wf_breaker_info;

/* The breakers. A host reads its own; a client reads what the host last wrote to the
 * database (state changes at once, counts at most a second old). Free with wf_breakers_free(). */
int wf_breakers(wf_host *h, wf_breaker_info **out /* OUT */, size_t *n /* OUT */);
void wf_breakers_free(wf_breaker_info *list, size_t n);

/* Opens a breaker by hand until wf_breaker_close() (isolate), or closes it with an empty
 * window. key NULL or "": the action's only breaker. Both modes: a client's request is
 * applied by the running host; it survives restarts. */
int wf_breaker_isolate(wf_host *h, const char *action, const char *key);
int wf_breaker_close(wf_host *h, const char *action, const char *key);

/* ---- The outbox: subscribers (host mode) ------------------------------------------------ */

/* A workflow's ctx:emit(topic, payload) writes a message to the durable outbox in the same
 * transaction as its step. Once that transaction is committed (never before), the host
 * delivers the message to every subscriber whose pattern matches the topic, at least once:
 * a delivery that fails, times out or was in flight when a host died is delivered again.
 *
 *   - Each subscriber has its own delivery state: one that fails never makes the others
 *     receive a message again.
 *   - A subscriber receives its messages one at a time, in emit order. A failed delivery is
 *     retried after the policy's backoff (the time is stored: it survives a restart) and holds
 *     the subscriber's later messages back until it succeeds or its attempts run out; then it
 *     is kept as failed (a dead letter, `wfhost outbox --failed`) and the next one goes.
 *   - A message whose topic no subscriber matches is kept (status unrouted) and routed to the
 *     subscribers that match when one is registered.
 *   - A delivered message is deleted from the outbox; the instance's history keeps an `emit`
 *     entry with its id and payload.
 * Message ids are "<instance id>:<seq>:<n>" (the n-th emit after command seq): stable across
 * replays and redeliveries, so a subscriber can drop duplicates. */
typedef struct wf_delivery wf_delivery;

/* Called on the loop thread for each delivery attempt. The strings stay valid until the
 * delivery is completed, exactly once, with wf_delivery_ok() or wf_delivery_fail(), before
 * returning or later from the loop thread. attempt is 1 for the first (a delivery in flight
 * when a host died is delivered again with the same attempt number). */
typedef void (*wf_subscriber_fn)(wf_delivery *d, const char *msg_id, const char *topic,
                                 const char *payload_json, int attempt, void *ud);

typedef struct wf_subscriber_opts {
  /* Retries, as for an action (wf_retry_policy): max_attempts (default 10; 0: unlimited),
   * backoff, initial_delay_ms, multiplier, max_delay_ms, jitter; attempt_timeout_ms (default
   * 30000: a delivery not completed by then fails, and its late completion is ignored);
   * non_retryable (failures of these types become dead letters at once). total_timeout_ms and
   * suspend_on_exhaustion do not apply. */
  wf_retry_policy retry;
} wf_subscriber_opts;

/* Initialises opts to the defaults above. */
void wf_subscriber_opts_init(wf_subscriber_opts *opts);

/* Registers (or replaces) a subscriber. name: letters, digits, '_', '-' and '.' (at most 128
 * bytes): the delivery state is kept under this name across restarts. pattern: a topic
 * ("order.shipped"), a prefix wildcard ("order.*": every topic that starts with "order."), or
 * "*" for every topic. opts: NULL for the defaults. Returns WF_INVALID with a message for a bad
 * name, pattern or policy. Messages emitted while no subscriber matched are routed to it. */
int wf_subscribe(wf_host *h, const char *name, const char *pattern, wf_subscriber_fn fn, void *ud,
                 const wf_subscriber_opts *opts);

const char *wf_delivery_subscriber(const wf_delivery *d); /* the subscriber's name */
const char *wf_delivery_instance(const wf_delivery *d);   /* the emitting instance's id */
wf_host *wf_delivery_host(const wf_delivery *d);          /* NULL once the host has closed */

/* Tells wf_host_drain() not to wait for this delivery (as wf_call_hold()). */
void wf_delivery_hold(wf_delivery *d);

/* Completes the delivery: delivered. The handle is freed. */
void wf_delivery_ok(wf_delivery *d);

/* Completes the delivery: failed, with a message (and a short type matched by the policy's
 * non_retryable list, or NULL). It is retried after the backoff, or becomes a dead letter once
 * the attempts run out. The handle is freed. */
void wf_delivery_fail(wf_delivery *d, const char *type, const char *message);

/* One delivery (or an unrouted message) as listed by wf_outbox_list(). */
typedef struct wf_outbox_entry {
  char *msg_id;
  char *topic;
  char *instance_id;
  char *payload_json;
  char *subscriber;  /* NULL for an unrouted message */
  char *status;      /* pending, failed (a dead letter), unrouted */
  int attempts;      /* failed attempts so far */
  int64_t next_at;   /* pending: when the next attempt may start */
  char *last_error;  /* the last failure, or NULL */
  int64_t created_at;
  int64_t updated_at;
} wf_outbox_entry;

/* Lists what is not delivered, in emit order (then by subscriber): status NULL for all,
 * "pending" (pending and unrouted) or "failed"; at most limit (0: no limit). As committed;
 * both modes. Free with wf_outbox_list_free(). */
int wf_outbox_list(wf_host *h, const char *status, int limit, wf_outbox_entry **out /* OUT */,
                   size_t *n /* OUT */);
void wf_outbox_list_free(wf_outbox_entry *list, size_t n);

/* Makes the failed deliveries of message msg_id pending again, with a fresh round of
 * attempts: to one subscriber, or to all with subscriber NULL. WF_NOTFOUND if the message has
 * no failed delivery (to that subscriber). Both modes: a client's request is applied by the
 * running host. */
int wf_outbox_retry(wf_host *h, const char *msg_id, const char *subscriber);

/* A plugin for the `wfhost` command is a shared object exporting this function; it registers
 * its actions (and outbox subscribers) and returns WF_OK. */
typedef int (*wf_plugin_init_fn)(wf_host *h);
#define WF_PLUGIN_INIT_SYMBOL "wfhost_plugin_init"

/* ---- Instances (both modes) ------------------------------------------------------------- */

#define WF_ID_MAX 128 /* longest instance id, in bytes */

/* Called once a request is durable (or failed). id is the instance id. */
typedef void (*wf_done_fn)(wf_host *h, int rc, const char *id, void *ud);

/* Starts an instance of workflow with input_json (NULL: null). id may be NULL to have one
 * generated (a time-ordered UUID, version 7), or a caller-chosen id: starting an id that exists (with the same workflow) starts
 * nothing and succeeds, so a retried start never makes a duplicate; with another workflow it
 * is refused with WF_STATE. The id is copied to id_out (WF_ID_MAX + 1 bytes) if
 * not NULL. Host mode: the instance is created in the next commit and done() is called
 * once it is durable. Client mode: returns once the request is durable (done() is called
 * before returning). Returns WF_NOTFOUND for an unknown workflow, WF_INVALID for malformed
 * JSON, a bad id or a payload over max_payload. */
int wf_start(wf_host *h, const char *workflow, const char *input_json, const char *id,
             char *id_out /* OUT, may be NULL */, wf_done_fn done, void *ud);

/* Sends an event to an instance. It is kept in the instance's durable inbox until a
 * wait_for takes it, oldest first. Returns WF_NOTFOUND for an unknown instance, WF_STATE if
 * it has finished. done() as for wf_start(). */
int wf_signal(wf_host *h, const char *id, const char *event, const char *data_json,
              wf_done_fn done, void *ud);

/* Requests cancellation: the workflow gets a `cancelled` error at its current yield point.
 * Returns WF_NOTFOUND / WF_STATE as wf_signal(). */
int wf_cancel(wf_host *h, const char *id, wf_done_fn done, void *ud);

/* Resumes a suspended instance (after a non-determinism diff, an unregistered action, ...)
 * by replaying it with the code now loaded. Returns WF_STATE if it is not suspended. */
int wf_retry(wf_host *h, const char *id, wf_done_fn done, void *ud);

/* Everything a reader may want to know about an instance, as committed. */
typedef struct wf_info {
  char *id;
  char *workflow;
  int version;
  char *status;       /* pending, running, waiting, completed, failed, cancelled, suspended */
  char *state;        /* the label set by ctx:set_state, or NULL */
  char *input_json;
  char *data_json;    /* ctx.data, a JSON object */
  char *output_json;  /* the returned value once completed, else NULL */
  char *error;        /* failure or suspension message (with traceback), else NULL */
  char *waiting_for;  /* what a waiting instance waits on, e.g. "event Approve|Reject", else NULL */
  int64_t created_at;
  int64_t updated_at;
  double progress;    /* 0 to 100 as last set by ctx:progress, or -1 if it never was */
  char *progress_message; /* its message, or NULL */
  char *parent_id;    /* the instance that started this one with ctx:child / ctx:start_child, or NULL */
  int run;            /* 1, and one more after each ctx:continue_as_new (the history is the run's) */
} wf_info;

typedef struct wf_history_entry {
  int64_t pos;     /* 1, 2, ... in journal order */
  int64_t seq;     /* the command this entry belongs to (0: the instance itself) */
  char *kind;      /* started, action, action_result, action_error, action_lost, wait, event,
                      timeout, sleep, timer_fired, now, random, uuid, state, cancel (the
                      instance's cancellation reaching it), withdrawn (a cancelled branch gave
                      the command up), ignored (a result after that), compensation (a saga's
                      progress: begin, done, failed, end), completed, failed, cancelled,
                      suspended, patch (ctx:patched took the new code path; name: the change
                      id), history_warning (the history passed history_warn entries), emit
                      (an outbox message: name the topic, data {"id","payload"}); for an
                      action step's attempts: attempt,
                      attempt_failed, rejected, retry_scheduled, exhausted, outcome_unknown,
                      breaker (see "Observing actions") */
  char *name;      /* action or event name, or NULL */
  char *data_json; /* JSON, or NULL */
  int64_t at;
} wf_history_entry;

/* Reads one instance. *out is allocated; free it with wf_info_free(). WF_NOTFOUND if absent. */
int wf_get(wf_host *h, const char *id, wf_info **out /* OUT */);
void wf_info_free(wf_info *info);

/* Lists instances, newest first, filtered by status and/or workflow (NULL: any), at most
 * limit (0: no limit). *out is an array of *n entries; free with wf_info_list_free(). */
int wf_list(wf_host *h, const char *status, const char *workflow, int limit,
            wf_info **out /* OUT */, size_t *n /* OUT */);
void wf_info_list_free(wf_info *list, size_t n);

/* Reads an instance's history in journal order; free with wf_history_free(). */
int wf_history(wf_host *h, const char *id, wf_history_entry **out /* OUT */, size_t *n /* OUT */);
void wf_history_free(wf_history_entry *entries, size_t n);

/* A version of a workflow: loaded, or still needed by unfinished instances. */
typedef struct wf_workflow_info {
  char *name;
  int version;
  char *source;   /* the file it was loaded from, or NULL (not loaded, or unknown) */
  int loaded;     /* 1 if loaded (a client: by the host that last started on the database) */
  int newest;     /* 1 for the newest loaded version: new instances start on it */
  int64_t active; /* its instances that have not finished (pending, running, waiting,
                     suspended); those of a version that is not loaded are suspended when they
                     next run, until it is loaded again and they are retried */
} wf_workflow_info;

/* Lists every loaded workflow version and every version unfinished instances run, by name
 * and version. Free with wf_workflows_free(). Both modes. */
int wf_workflows(wf_host *h, wf_workflow_info **out /* OUT */, size_t *n /* OUT */);
void wf_workflows_free(wf_workflow_info *list, size_t n);

/* Replays the instance's history against the workflow code loaded now, without invoking
 * actions or writing anything, and reports the first divergence: *report is NULL when the code
 * reproduces the history up to where the instance is, else a malloc'd message (free() it), as
 * "non-determinism at step 3: history has action `notify`, the code now calls action `mail`".
 * The check to run before deploying changed code for instances in flight. Host mode. */
int wf_replay_check(wf_host *h, const char *id, char **report /* OUT */);

/* Writes a consistent copy of the database to path (which must not exist), while the host may
 * keep running: a backup, or a copy to replay histories against new code. */
int wf_snapshot(wf_host *h, const char *path);

/* ---- Schedules (both modes) ------------------------------------------------------------- */

/* A schedule starts an instance of a workflow at each firing of a cron expression: five fields
 * (minute hour day-of-month month day-of-week) with `*`, lists, ranges, steps and names, or a
 * macro (@hourly, @daily, @weekly, @monthly, @yearly), in UTC or an IANA time zone (the syntax:
 * docs/patterns.md "Cron syntax"; the daylight-saving rules: docs/lua-api.md "Schedules").
 * Schedules are declared by workflow definitions (`schedule = ...`, written to the database when
 * a host starts) or added by operators with wf_schedule_add(). They are durable: each has a
 * stored next firing, and the instance of a firing is created in the same transaction that moves
 * it on, so a crash never starts a firing twice nor loses one.
 *
 * The instance of a firing has the id "<schedule id>@<firing time>" (as
 * "nightly@2026-01-02T03:00:00Z", UTC) and as input the schedule's input object with a field
 * "schedule": {"id": "<schedule id>", "at": "<firing time>", "at_ms": <firing time in ms>}. */

/* A firing found due more than this late was missed (no host ran, or its loop was blocked). */
#define WF_SCHEDULE_GRACE_MS 60000

/* What happens to missed firings: skip them (counted, logged; the schedule goes on from now;
 * the default), or run one instance for the latest of them, then go on. */
typedef enum { WF_CATCH_UP_SKIP = 0, WF_CATCH_UP_ONCE = 1 } wf_catch_up;

/* A firing while the schedule's previous instance has not finished (a suspended instance has
 * not): skipped and counted (the default), or started anyway. */
typedef enum { WF_OVERLAP_SKIP = 0, WF_OVERLAP_ALLOW = 1 } wf_overlap;

typedef struct wf_schedule_opts {
  const char *timezone; /* an IANA zone name ("Europe/Berlin"); NULL or "UTC": UTC */
  wf_catch_up catch_up;
  wf_overlap overlap;
} wf_schedule_opts;

/* Initialises opts to the defaults: UTC, catch-up skip, overlap skip. */
void wf_schedule_opts_init(wf_schedule_opts *opts);

/* Adds the schedule id (NULL: the workflow's name) starting workflow with input_json (a JSON
 * object; NULL: {}) at each firing of cron, or replaces the schedule of that id: its counters and
 * last firing are kept, and its next firing too if cron and zone are unchanged (else the next
 * firing is computed from now). id: 1 to 100 letters, digits, '_', '.', ':' or '-'. opts: NULL
 * for the defaults. Durable when it returns; a running host applies a client's change within its
 * poll interval. Returns WF_INVALID (with the bad field named: `cron "*\/0 * * * *": minute: step
 * must be >= 1`, an unknown zone, an input that is not an object or has a field "schedule"),
 * WF_NOTFOUND for an unknown workflow, WF_STATE if id is a schedule declared by a definition. */
int wf_schedule_add(wf_host *h, const char *id, const char *workflow, const char *cron, const char *input_json,
                    const wf_schedule_opts *opts);

/* Removes an operator's schedule; the instances it started are untouched. WF_NOTFOUND if there
 * is none, WF_STATE if it is declared by a definition (remove the field from the workflow file). */
int wf_schedule_remove(wf_host *h, const char *id);

typedef struct wf_schedule_info {
  char *id;
  char *workflow;
  char *cron;
  char *timezone;      /* "UTC" or an IANA name */
  char *input_json;    /* the schedule's input object */
  char *catch_up;      /* "skip" or "once" */
  char *overlap;       /* "skip" or "allow" */
  char *origin;        /* "definition" or "operator" */
  int64_t next_at;     /* the next firing, 0: none */
  int64_t last_at;     /* the firing of the last instance started, 0: none yet */
  char *last_instance; /* its id, or NULL */
  int64_t missed;      /* firings skipped because they were missed (catch-up) */
  int64_t overlapped;  /* firings skipped because the previous instance ran (overlap skip) */
  int64_t created_at;
  int64_t updated_at;
} wf_schedule_info;

/* The schedules, by id, as committed. Free with wf_schedules_free(). */
int wf_schedules(wf_host *h, wf_schedule_info **out /* OUT */, size_t *n /* OUT */);
void wf_schedules_free(wf_schedule_info *list, size_t n);

/* ---- Running (host mode) ---------------------------------------------------------------- */

/* The loop the host runs on (its own or the one given in the config). */
uv_loop_t *wf_host_loop(wf_host *h);

/* Recovers the instances left running by a previous host (re-dispatching actions that were
 * in flight, arming timers) and starts taking requests. Called by wf_host_run() and
 * wf_host_drain() if needed; call it yourself when you drive the loop. Idempotent. */
int wf_host_start(wf_host *h);

/* Runs the loop until wf_host_stop() (or a signal handler calling it). Returns WF_OK once the
 * loop stops, or the error of wf_host_start(). */
int wf_host_run(wf_host *h);

/* Runs the loop until no work is ready: every instance is waiting on an event or a future
 * timer, or finished, and no action is in flight. Does not wait for timers. For tests and
 * batch programs. */
int wf_host_drain(wf_host *h);

/* One turn of wf_host_drain(): if work is ready, runs the loop once (about one batch: the work
 * at hand, committed, its effects released) and sets *busy to 1; else sets it to 0. Lets a test
 * stop the host between any two steps (to restart it, as a crash would). */
int wf_host_step(wf_host *h, int *busy /* OUT */);

/* The due time of the earliest timer the host has armed (*due), or WF_NOTFOUND if none: timers,
 * action deadlines and the next firing of a schedule. A timer
 * whose wait was satisfied meanwhile may still be listed; firing it does nothing. Lets a test
 * with a virtual clock step from timer to timer. */
int wf_next_timer(wf_host *h, int64_t *due /* OUT */);

/* Asks wf_host_run() to return after committing the work at hand. Safe from a signal
 * handler? No: call it from the loop thread (e.g. a uv_signal_t callback). */
void wf_host_stop(wf_host *h);

#ifdef __cplusplus
}
#endif
#endif /* WFHOST_H */

/*
 * wf_cli.c — the `wfhost` command, the operator's tool.
 *
 * `wfhost run` is a host process: it opens the database in host mode, registers the actions
 * of plugins, loads the workflow files and runs instances until SIGINT or SIGTERM. Every
 * other command opens a client handle, writes one durable request (start, signal, cancel,
 * retry) or reads instances, and exits; the running host picks the requests up within its
 * poll interval. The command uses only the public API (wfhost.h), libuv for the signal
 * handles of `run`, and dlfcn for plugins. docs/cli.md is its reference.
 *
 * This file parses the command line and runs the commands; what they print is rendered by
 * wf_cli_print.c (declared in wf_cli.h).
 *
 * Exit status: 0 success; 1 failure, with one `wfhost: <message>` line on stderr; 2 usage
 * error, with a hint to run --help.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "wf_cli.h"

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

#define DEFAULT_DB "./wfhost.db"
#define DEFAULT_WORKFLOWS "./workflows"
#define STDIN_MAX ((size_t)64 << 20) /* far above any payload limit; only guards memory */

/* ---- command line ------------------------------------------------------------------- */

typedef struct command command;

/* An option given to a command, in command-line order (repeatable ones appear repeatedly). */
typedef struct opt_val {
  const char *name; /* "--id" */
  const char *value;
} opt_val;

/* The parsed command line. Pointers point into argv or are string literals. */
typedef struct cli {
  const char *db;
  int json;
  const command *cmd;
  const char **pos; /* positional arguments after the command name */
  int npos;
  opt_val *opts;
  int nopts;
} cli;

struct command {
  const char *name;
  int (*run)(cli *c);
  int min_pos, max_pos;
  const char *const *opts; /* options taking a value, NULL-terminated */
  const char *synopsis;    /* after "wfhost " */
  const char *summary;     /* one line for `wfhost --help` */
  const char *help;        /* description, options and an example */
  const char *const *flags; /* options taking no value, NULL-terminated, or NULL */
};

static const char *prog_cmd; /* the command name for messages, or NULL */

/* Prints a usage error and its hint; returns EXIT_USAGE. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
  va_list ap;
  fputs("wfhost: ", stderr);
  if (prog_cmd) fprintf(stderr, "%s: ", prog_cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  if (prog_cmd) fprintf(stderr, "\nRun 'wfhost %s --help' for usage.\n", prog_cmd);
  else fputs("\nRun 'wfhost --help' for the list of commands.\n", stderr);
  return EXIT_USAGE;
}

/* Prints `wfhost: <message>`; returns EXIT_FAIL. */
static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
  va_list ap;
  fputs("wfhost: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return EXIT_FAIL;
}

/* Prints the handle's last error (indenting continuation lines); returns EXIT_FAIL. */
static int fail_host(const wf_host *h, int rc) {
  const char *m = wf_errmsg(h);
  if (!h || !strcmp(m, "no error")) m = wf_strerror(rc);
  fputs("wfhost: ", stderr);
  for (const char *p = m; *p; p++) {
    fputc(*p, stderr);
    if (*p == '\n' && p[1]) fputs("  ", stderr);
  }
  fputc('\n', stderr);
  return EXIT_FAIL;
}

static int opt_has(const cli *c, const char *name) {
  for (int i = 0; i < c->nopts; i++)
    if (!strcmp(c->opts[i].name, name)) return 1;
  return 0;
}

static const char *opt_last(const cli *c, const char *name) {
  const char *v = NULL;
  for (int i = 0; i < c->nopts; i++)
    if (!strcmp(c->opts[i].name, name)) v = c->opts[i].value;
  return v;
}

/* Parses a non-negative decimal int (digits only); 0 on success. */
static int parse_int(const char *s, int *out) {
  char *end;
  errno = 0;
  if (*s < '0' || *s > '9') return -1;
  long v = strtol(s, &end, 10);
  if (*end || errno || v > INT_MAX) return -1;
  *out = (int)v;
  return 0;
}

/* Reads all of stdin into a NUL-terminated string (malloc'd); NULL after printing why. */
static char *read_stdin(void) {
  size_t n = 0, cap = 65536;
  char *buf = malloc(cap);
  if (!buf) return fail("out of memory reading stdin"), NULL;
  for (;;) {
    if (cap - n < 2) {
      if (cap >= STDIN_MAX) {
        free(buf);
        fail("the JSON on stdin is larger than %zu MiB", STDIN_MAX >> 20);
        return NULL;
      }
      char *nb = realloc(buf, cap * 2);
      if (!nb) return free(buf), fail("out of memory reading stdin"), NULL;
      buf = nb;
      cap *= 2;
    }
    size_t r = fread(buf + n, 1, cap - n - 1, stdin);
    n += r;
    if (r == 0) break;
  }
  if (ferror(stdin)) {
    free(buf);
    fail("cannot read stdin: %s", strerror(errno));
    return NULL;
  }
  if (memchr(buf, 0, n)) {
    free(buf);
    fail("the JSON on stdin contains a NUL byte");
    return NULL;
  }
  /* The newline that ends a file or an echo is not part of the value. */
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t')) n--;
  buf[n] = 0;
  if (n == 0) {
    free(buf);
    fail("no JSON on stdin (it was empty)");
    return NULL;
  }
  return buf;
}

/* A JSON argument: NULL when absent (JSON null), stdin for "-", else the argument itself.
 * *owned receives what the caller frees. Returns 0, or -1 after printing why. */
static int json_arg(const char *arg, const char **json, char **owned) {
  *owned = NULL;
  *json = arg;
  if (arg && !strcmp(arg, "-")) {
    if (!(*owned = read_stdin())) return -1;
    *json = *owned;
  }
  return 0;
}

/* Opens a client handle on the database. A missing file is refused rather than created: it
 * is almost always a mistyped --db, and a database no host runs on would silently collect
 * requests. */
static int open_client(const cli *c, wf_host **h) {
  *h = NULL;
  if (strcmp(c->db, ":memory:") && access(c->db, F_OK) != 0) {
    if (errno == ENOENT)
      return fail("no database at '%s': start a host there with 'wfhost run --db %s', or pass --db PATH "
                  "(or set WFHOST_DB)", c->db, c->db);
    return fail("cannot access the database '%s': %s", c->db, strerror(errno));
  }
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.mode = WF_MODE_CLIENT;
  int rc = wf_host_open(c->db, &cfg, h);
  if (rc != WF_OK) {
    fail_host(*h, rc);
    wf_host_close(*h);
    *h = NULL;
    return EXIT_FAIL;
  }
  return EXIT_OK;
}

/* ---- commands: requests ------------------------------------------------------------------- */

static void print_ok(const cli *c, const char *id) {
  if (!c->json) return;
  fputs("{\"ok\":true,\"id\":", stdout);
  wf_cli_json_str(stdout, id);
  fputs("}\n", stdout);
}

static int cmd_start(cli *c) {
  const char *workflow = c->pos[0], *id = opt_last(c, "--id"), *json;
  char *owned, id_out[WF_ID_MAX + 1];
  if (!*workflow) return usage_error("the workflow name is empty");
  if (json_arg(c->npos > 1 ? c->pos[1] : NULL, &json, &owned)) return EXIT_FAIL;
  wf_host *h;
  int st = open_client(c, &h);
  if (st != EXIT_OK) return free(owned), st;
  /* wf_start() reports an existing id as success without saying so; look first, so the
   * operator learns that nothing new was started. */
  int existed = 0;
  wf_info *prev = NULL;
  if (id && wf_get(h, id, &prev) == WF_OK) existed = 1;
  wf_info_free(prev);
  int rc = wf_start(h, workflow, json, id, id_out, NULL, NULL);
  free(owned);
  if (rc != WF_OK) {
    st = fail_host(h, rc);
  } else if (c->json) {
    fputs("{\"id\":", stdout);
    wf_cli_json_str(stdout, id_out);
    printf(",\"created\":%s}\n", existed ? "false" : "true");
  } else {
    printf("%s\n", id_out);
    if (existed) fprintf(stderr, "wfhost: instance '%s' already exists; nothing was started\n", id_out);
  }
  wf_host_close(h);
  return st;
}

static int cmd_signal(cli *c) {
  const char *json;
  char *owned;
  if (json_arg(c->npos > 2 ? c->pos[2] : NULL, &json, &owned)) return EXIT_FAIL;
  wf_host *h;
  int st = open_client(c, &h);
  if (st != EXIT_OK) return free(owned), st;
  int rc = wf_signal(h, c->pos[0], c->pos[1], json, NULL, NULL);
  free(owned);
  if (rc != WF_OK) st = fail_host(h, rc);
  else print_ok(c, c->pos[0]);
  wf_host_close(h);
  return st;
}

static int cmd_cancel_retry(cli *c) {
  wf_host *h;
  int st = open_client(c, &h);
  if (st != EXIT_OK) return st;
  int rc = !strcmp(c->cmd->name, "cancel") ? wf_cancel(h, c->pos[0], NULL, NULL)
                                           : wf_retry(h, c->pos[0], NULL, NULL);
  if (rc != WF_OK) st = fail_host(h, rc);
  else print_ok(c, c->pos[0]);
  wf_host_close(h);
  return st;
}

/* ---- commands: reads ------------------------------------------------------------------ */

static const char *const statuses[] = {"pending", "running", "waiting", "completed",
                                       "failed", "cancelled", "suspended", NULL};

static int cmd_list(cli *c) {
  const char *status = opt_last(c, "--status"), *workflow = opt_last(c, "--workflow");
  const char *lim = opt_last(c, "--limit");
  int limit = 0;
  if (status) {
    int ok = 0;
    for (int i = 0; statuses[i]; i++) ok |= !strcmp(status, statuses[i]);
    if (!ok)
      return usage_error("unknown status '%s' (pending, running, waiting, completed, failed, cancelled "
                         "or suspended)", status);
  }
  if (lim && parse_int(lim, &limit)) return usage_error("--limit takes a number >= 0 (0: no limit), not '%s'", lim);
  wf_host *h;
  int st = open_client(c, &h);
  if (st != EXIT_OK) return st;
  wf_info *list = NULL;
  size_t n = 0;
  int rc = wf_list(h, status, workflow, limit, &list, &n);
  if (rc != WF_OK) {
    st = fail_host(h, rc);
  } else if (c->json) {
    wf_cli_print_list_json(list, n);
  } else if (n == 0) {
    fprintf(stderr, "wfhost: no instances%s\n", status || workflow ? " match" : "");
  } else {
    wf_cli_print_list(list, n);
  }
  wf_info_list_free(list, n);
  wf_host_close(h);
  return st;
}

static int cmd_show(cli *c) {
  wf_host *h;
  int st = open_client(c, &h);
  if (st != EXIT_OK) return st;
  wf_info *in = NULL;
  wf_history_entry *hist = NULL;
  size_t nh = 0;
  int rc = wf_get(h, c->pos[0], &in);
  if (rc == WF_OK) rc = wf_history(h, c->pos[0], &hist, &nh);
  if (rc != WF_OK) {
    st = fail_host(h, rc);
  } else if (c->json) {
    wf_cli_print_show_json(in, hist, nh);
  } else {
    wf_cli_print_show(in, hist, nh);
  }
  wf_history_free(hist, nh);
  wf_info_free(in);
  wf_host_close(h);
  return st;
}

static int cmd_workflows(cli *c) {
  wf_host *h;
  int st = open_client(c, &h);
  if (st != EXIT_OK) return st;
  wf_workflow_info *list = NULL;
  size_t n = 0;
  int rc = wf_workflows(h, &list, &n);
  if (rc != WF_OK) st = fail_host(h, rc);
  else if (c->json) wf_cli_print_workflows_json(list, n);
  else if (n == 0) fprintf(stderr, "wfhost: no workflows: no host has loaded any on this database yet\n");
  else wf_cli_print_workflows(list, n);
  wf_workflows_free(list, n);
  wf_host_close(h);
  return st;
}

/* breakers | breakers isolate ACTION [KEY] | breakers close ACTION [KEY] */
static int cmd_breakers(cli *c) {
  const char *op = c->npos ? c->pos[0] : NULL;
  if (op && strcmp(op, "isolate") && strcmp(op, "close"))
    return usage_error("unknown breakers operation '%s' (isolate or close)", op);
  if (op && c->npos < 2) return usage_error("breakers %s needs an action name", op);
  wf_host *h;
  int st = open_client(c, &h);
  if (st != EXIT_OK) return st;
  if (op) {
    const char *key = c->npos > 2 ? c->pos[2] : NULL;
    int rc = !strcmp(op, "isolate") ? wf_breaker_isolate(h, c->pos[1], key) : wf_breaker_close(h, c->pos[1], key);
    if (rc != WF_OK) st = fail_host(h, rc);
    else if (c->json) fputs("{\"ok\":true}\n", stdout);
    else printf("%s %s%s%s: requested; the host applies it within its poll interval\n",
                               !strcmp(op, "isolate") ? "isolating" : "closing", c->pos[1], key ? " key " : "", key ? key : "");
    wf_host_close(h);
    return st;
  }
  wf_breaker_info *list = NULL;
  size_t n = 0;
  int rc = wf_breakers(h, &list, &n);
  if (rc != WF_OK) st = fail_host(h, rc);
  else if (c->json) wf_cli_print_breakers_json(list, n);
  else if (n == 0) fprintf(stderr, "wfhost: no circuit breaker has recorded anything yet\n");
  else wf_cli_print_breakers(list, n);
  wf_breakers_free(list, n);
  wf_host_close(h);
  return st;
}

/* schedule add WORKFLOW CRON [JSON] | schedule list | schedule rm ID */
static int cmd_schedule(cli *c) {
  const char *op = c->pos[0];
  if (strcmp(op, "add") && strcmp(op, "list") && strcmp(op, "rm"))
    return usage_error("unknown schedule operation '%s' (add, list or rm)", op);
  int nargs = c->npos - 1;
  if (!strcmp(op, "add") && (nargs < 2 || nargs > 3))
    return usage_error("schedule add takes WORKFLOW CRON [JSON] (quote CRON: '*/15 * * * *')");
  if (!strcmp(op, "rm") && nargs != 1) return usage_error("schedule rm takes one schedule id");
  if (!strcmp(op, "list") && nargs != 0) return usage_error("schedule list takes no arguments");
  const char *tz = opt_last(c, "--tz"), *cu = opt_last(c, "--catch-up"), *ov = opt_last(c, "--overlap");
  const char *sid = opt_last(c, "--id");
  if (strcmp(op, "add") && (tz || cu || ov || sid))
    return usage_error("--id, --tz, --catch-up and --overlap go with schedule add");
  wf_schedule_opts o;
  wf_schedule_opts_init(&o);
  o.timezone = tz;
  if (cu && strcmp(cu, "skip") && strcmp(cu, "once")) return usage_error("--catch-up takes skip or once, not '%s'", cu);
  if (ov && strcmp(ov, "skip") && strcmp(ov, "allow")) return usage_error("--overlap takes skip or allow, not '%s'", ov);
  o.catch_up = cu && !strcmp(cu, "once") ? WF_CATCH_UP_ONCE : WF_CATCH_UP_SKIP;
  o.overlap = ov && !strcmp(ov, "allow") ? WF_OVERLAP_ALLOW : WF_OVERLAP_SKIP;
  const char *json = NULL;
  char *owned = NULL;
  if (!strcmp(op, "add") && json_arg(c->npos > 3 ? c->pos[3] : NULL, &json, &owned)) return EXIT_FAIL;
  wf_host *h;
  int st = open_client(c, &h);
  if (st != EXIT_OK) return free(owned), st;
  int rc = WF_OK;
  if (!strcmp(op, "add")) {
    rc = wf_schedule_add(h, sid, c->pos[1], c->pos[2], json, &o);
    if (rc == WF_OK) {
      wf_schedule_info *list = NULL;
      size_t n = 0;
      const char *id = sid ? sid : c->pos[1];
      rc = wf_schedules(h, &list, &n);
      for (size_t i = 0; rc == WF_OK && i < n; i++) {
        if (strcmp(list[i].id, id)) continue;
        if (c->json) wf_cli_print_schedules_json(&list[i], 1);
        else wf_cli_print_schedule_added(&list[i]);
      }
      wf_schedules_free(list, n);
    }
  } else if (!strcmp(op, "rm")) {
    rc = wf_schedule_remove(h, c->pos[1]);
    if (rc == WF_OK) print_ok(c, c->pos[1]);
  } else {
    wf_schedule_info *list = NULL;
    size_t n = 0;
    rc = wf_schedules(h, &list, &n);
    if (rc == WF_OK && c->json) wf_cli_print_schedules_json(list, n);
    else if (rc == WF_OK && n == 0) fprintf(stderr, "wfhost: no schedules\n");
    else if (rc == WF_OK) wf_cli_print_schedules(list, n);
    wf_schedules_free(list, n);
  }
  free(owned);
  if (rc != WF_OK) st = fail_host(h, rc);
  wf_host_close(h);
  return st;
}

/* outbox [--failed|--pending] [--limit N] | outbox retry MSGID [SUBSCRIBER] */
static int cmd_outbox(cli *c) {
  const char *op = c->npos ? c->pos[0] : NULL, *lim = opt_last(c, "--limit");
  int failed = opt_has(c, "--failed"), pending = opt_has(c, "--pending"), limit = 0;
  if (op && strcmp(op, "retry")) return usage_error("unknown outbox operation '%s' (retry)", op);
  if (op && c->npos < 2) return usage_error("outbox retry needs a message id");
  if (!op && c->npos > 0) return usage_error("unexpected argument '%s'", c->pos[0]);
  if (op && (failed || pending || lim)) return usage_error("outbox retry takes no --failed, --pending or --limit");
  if (failed && pending) return usage_error("--failed and --pending exclude each other (neither: both)");
  if (lim && parse_int(lim, &limit)) return usage_error("--limit takes a number >= 0 (0: no limit), not '%s'", lim);
  wf_host *h;
  int st = open_client(c, &h);
  if (st != EXIT_OK) return st;
  if (op) {
    const char *sub = c->npos > 2 ? c->pos[2] : NULL;
    int rc = wf_outbox_retry(h, c->pos[1], sub);
    if (rc != WF_OK) st = fail_host(h, rc);
    else if (c->json) fputs("{\"ok\":true}\n", stdout);
    else printf("retrying message %s%s%s: requested; the host delivers it again within its poll interval\n", c->pos[1],
                sub ? " to " : "", sub ? sub : "");
    wf_host_close(h);
    return st;
  }
  wf_outbox_entry *list = NULL;
  size_t n = 0;
  int rc = wf_outbox_list(h, failed ? "failed" : pending ? "pending" : NULL, limit, &list, &n);
  if (rc != WF_OK) st = fail_host(h, rc);
  else if (c->json) wf_cli_print_outbox_json(list, n);
  else if (n == 0) fprintf(stderr, "wfhost: %s\n", failed ? "no failed delivery" : pending ? "no pending delivery" :
                                                    "the outbox is empty: every message was delivered");
  else wf_cli_print_outbox(list, n);
  wf_outbox_list_free(list, n);
  wf_host_close(h);
  return st;
}

static int cmd_check(cli *c) {
  const char *dir = c->npos ? c->pos[0] : DEFAULT_WORKFLOWS;
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.mode = WF_MODE_CLIENT;
  wf_host *h;
  int rc = wf_host_open(":memory:", &cfg, &h);
  if (rc != WF_OK) {
    fail_host(h, rc);
    wf_host_close(h);
    return EXIT_FAIL;
  }
  rc = wf_check_dir(h, dir);
  int st = EXIT_OK;
  if (rc == WF_OK) {
    if (c->json) {
      fputs("{\"ok\":true,\"dir\":", stdout);
      wf_cli_json_str(stdout, dir);
      fputs(",\"problems\":[]}\n", stdout);
    } else {
      printf("ok: %s\n", dir);
    }
  } else if (rc != WF_LUA) {
    st = fail_host(h, rc);
  } else {
    /* One problem per line, as file:line: message, for editors and CI logs. */
    const char *m = wf_errmsg(h);
    int count = 0;
    if (c->json) {
      fputs("{\"ok\":false,\"dir\":", stdout);
      wf_cli_json_str(stdout, dir);
      fputs(",\"problems\":[", stdout);
    }
    for (const char *p = m; *p;) {
      size_t n = strcspn(p, "\n");
      if (c->json) {
        char *line = strndup(p, n);
        if (!line) abort();
        fputs(count ? "," : "", stdout);
        wf_cli_json_str(stdout, line);
        free(line);
      } else {
        fprintf(stderr, "%.*s\n", (int)n, p);
      }
      count++;
      p += n + (p[n] == '\n');
    }
    if (c->json) fputs("]}\n", stdout);
    st = fail("%s: %d problem%s", dir, count, count == 1 ? "" : "s");
  }
  wf_host_close(h);
  return st;
}

/* ---- command: run --------------------------------------------------------------------- */

typedef struct runner {
  wf_host *h;
  uv_signal_t sigint, sigterm;
  int signals; /* how many stop signals arrived */
} runner;

/* The first SIGINT/SIGTERM stops the host gracefully: it commits the work at hand and
 * wf_host_run() returns. A second one exits at once; nothing committed is lost, and work
 * that was not committed is redone by the next host. */
static void on_stop_signal(uv_signal_t *s, int signum) {
  runner *r = s->data;
  if (++r->signals == 1) {
    fprintf(stderr, "wfhost: %s received, stopping (send it again to exit at once)\n",
            signum == SIGINT ? "SIGINT" : "SIGTERM");
    wf_host_stop(r->h);
    return;
  }
  fprintf(stderr, "wfhost: second signal, exiting without waiting\n");
  _exit(EXIT_FAIL);
}

/* Loads one plugin and calls its init function; 0, or -1 after printing why. */
static int load_plugin(wf_host *h, const char *file, void **handle) {
  /* dlopen() searches the library path for a name without '/': make "x.so" mean ./x.so. */
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s%s", strchr(file, '/') ? "" : "./", file);
  *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!*handle) return fail("cannot load plugin %s: %s", file, dlerror()), -1;
  void *sym = dlsym(*handle, WF_PLUGIN_INIT_SYMBOL);
  if (!sym)
    return fail("plugin %s does not export %s(wf_host *): %s", file, WF_PLUGIN_INIT_SYMBOL, dlerror()), -1;
  wf_plugin_init_fn init;
  memcpy(&init, &sym, sizeof init);
  int rc = init(h);
  if (rc != WF_OK) {
    const char *m = wf_errmsg(h);
    return fail("plugin %s: %s() returned %d (%s)%s%s", file, WF_PLUGIN_INIT_SYMBOL, rc, wf_strerror(rc),
                strcmp(m, "no error") ? ": " : "", strcmp(m, "no error") ? m : ""), -1;
  }
  return 0;
}

static int cmd_run(cli *c) {
  const char *dir = opt_last(c, "--workflows"), *dur = opt_last(c, "--durability");
  const char *cache = opt_last(c, "--cache-size"), *lvl = opt_last(c, "--log-level");
  const char *hwarn = opt_last(c, "--history-warn"), *hlimit = opt_last(c, "--history-limit");
  if (!dir) dir = DEFAULT_WORKFLOWS;
  wf_config cfg;
  wf_config_init(&cfg);
  cfg.mode = WF_MODE_HOST;
  if (dur) {
    if (!strcmp(dur, "full")) cfg.durability = WF_DURABILITY_FULL;
    else if (!strcmp(dur, "normal")) cfg.durability = WF_DURABILITY_NORMAL;
    else return usage_error("--durability takes full or normal, not '%s'", dur);
  }
  if (cache && (parse_int(cache, &cfg.cache_size) || cfg.cache_size == 0))
    return usage_error("--cache-size takes a number of instances >= 1, not '%s'", cache);
  int v;
  if (hwarn) {
    if (parse_int(hwarn, &v) || v == 0) return usage_error("--history-warn takes a number of entries >= 1, not '%s'", hwarn);
    cfg.history_warn = v;
  }
  if (hlimit) {
    if (parse_int(hlimit, &v) || v == 0) return usage_error("--history-limit takes a number of entries >= 1, not '%s'", hlimit);
    cfg.history_limit = v;
  }
  if (lvl) {
    static const char *const names[] = {"debug", "info", "warn", "error"};
    int k = 0;
    while (k < 4 && strcmp(lvl, names[k])) k++;
    if (k == 4) return usage_error("--log-level takes debug, info, warn or error, not '%s'", lvl);
    cfg.log_level = (wf_log_level)k;
  }

  int nplugins = 0;
  for (int i = 0; i < c->nopts; i++) nplugins += !strcmp(c->opts[i].name, "--plugin");
  void **plugins = calloc((size_t)nplugins + 1, sizeof *plugins);
  if (!plugins) abort();

  runner r = {0};
  int st = EXIT_FAIL, rc = wf_host_open(c->db, &cfg, &r.h);
  if (rc != WF_OK) {
    fail_host(r.h, rc);
    goto done;
  }
  for (int i = 0, k = 0; i < c->nopts; i++)
    if (!strcmp(c->opts[i].name, "--plugin") && load_plugin(r.h, c->opts[i].value, &plugins[k++])) goto done;
  rc = wf_load_dir(r.h, dir);
  if (rc != WF_OK) {
    if (rc == WF_LUA) {
      fprintf(stderr, "wfhost: cannot load the workflows in %s:\n%s\n", dir, wf_errmsg(r.h));
    } else {
      fail_host(r.h, rc);
    }
    goto done;
  }

  uv_loop_t *loop = wf_host_loop(r.h);
  uv_signal_init(loop, &r.sigint);
  uv_signal_init(loop, &r.sigterm);
  r.sigint.data = r.sigterm.data = &r;
  uv_signal_start(&r.sigint, on_stop_signal, SIGINT);
  uv_signal_start(&r.sigterm, on_stop_signal, SIGTERM);
  fprintf(stderr, "wfhost: running workflows from %s on %s (pid %ld)\n", dir, c->db, (long)getpid());
  rc = wf_host_run(r.h);
  /* Closed before wf_host_close(), which runs the loop until every handle is closed. */
  uv_close((uv_handle_t *)&r.sigint, NULL);
  uv_close((uv_handle_t *)&r.sigterm, NULL);
  if (rc != WF_OK) fail_host(r.h, rc);
  else st = EXIT_OK;

done:
  wf_host_close(r.h);
  for (int k = 0; k < nplugins; k++)
    if (plugins[k]) dlclose(plugins[k]);
  free(plugins);
  if (st == EXIT_OK) fprintf(stderr, "wfhost: stopped\n");
  return st;
}

/* ---- the command table and main ------------------------------------------------------------- */

static const char *const run_opts[] = {"--workflows", "--plugin", "--durability", "--cache-size",
                                       "--log-level", "--history-warn", "--history-limit", NULL};
static const char *const start_opts[] = {"--id", NULL};
static const char *const list_opts[] = {"--status", "--workflow", "--limit", NULL};
static const char *const no_opts[] = {NULL};
static const char *const schedule_opts[] = {"--id", "--tz", "--catch-up", "--overlap", NULL};
static const char *const outbox_opts[] = {"--limit", NULL};
static const char *const outbox_flags[] = {"--failed", "--pending", NULL};

static const command commands[] = {
  {"run", cmd_run, 0, 0, run_opts,
   "run [--workflows DIR] [--plugin FILE.so]... [--durability full|normal] [--cache-size N] "
   "[--log-level LEVEL] [--history-warn N] [--history-limit N]",
   "run the host: execute instances until SIGINT or SIGTERM",
   "Opens the database as its host (one host per database), loads the actions of each plugin and\n"
   "the workflow files of DIR, and runs instances until SIGINT or SIGTERM; the host then commits\n"
   "the work at hand and exits 0. A second signal exits at once (work not yet committed is redone\n"
   "by the next host). Log lines go to stderr.\n\n"
   "Options:\n"
   "  --workflows DIR        the workflow files, *.lua directly in DIR (default ./workflows)\n"
   "  --plugin FILE.so       a shared object exporting int wfhost_plugin_init(wf_host *h), which\n"
   "                         registers actions; repeatable\n"
   "  --durability MODE      full (default): a committed step survives power loss;\n"
   "                         normal: survives a crash of the process, faster on slow disks\n"
   "  --cache-size N         live coroutines kept in memory (default 10000)\n"
   "  --log-level LEVEL      debug, info (default), warn or error\n"
   "  --history-warn N       warn (log and 'wfhost show') when an instance's history passes N\n"
   "                         entries (default 10000)\n"
   "  --history-limit N      fail an instance rather than let its history pass N entries\n"
   "                         (default 100000); ctx:continue_as_new keeps a history bounded\n\n"
   "Example:\n"
   "  wfhost --db /var/lib/wfhost/prod.db run --workflows ./workflows --plugin ./myactions.so\n", NULL},
  {"start", cmd_start, 1, 2, start_opts, "start WORKFLOW [JSON] [--id ID]",
   "start an instance of a workflow and print its id",
   "Starts an instance of WORKFLOW with JSON as its input (default null; '-' reads it from stdin)\n"
   "and prints the instance id. The request is durable when the command returns; the host runs it\n"
   "within its poll interval. Starting an ID that exists starts nothing (a note says so on stderr).\n\n"
   "Options:\n"
   "  --id ID   the instance id (default: a generated UUID); 1 to 128 bytes, no spaces\n\n"
   "Example:\n"
   "  wfhost start invoice_approval '{\"id\":\"INV-7\",\"amount\":120}' --id inv-7\n", NULL},
  {"signal", cmd_signal, 2, 3, no_opts, "signal ID EVENT [JSON]", "send an event to an instance",
   "Sends EVENT with JSON data (default null; '-' reads it from stdin) to instance ID. The event\n"
   "waits in the instance's durable inbox until a ctx:wait_for takes it.\n\n"
   "Example:\n"
   "  wfhost signal inv-7 Approve '{\"user\":\"ann\"}'\n", NULL},
  {"cancel", cmd_cancel_retry, 1, 1, no_opts, "cancel ID", "ask an instance to cancel",
   "Requests cancellation of instance ID: the workflow gets a `cancelled` error at its current\n"
   "yield point and may run its compensations.\n\n"
   "Example:\n"
   "  wfhost cancel inv-7\n", NULL},
  {"retry", cmd_cancel_retry, 1, 1, no_opts, "retry ID", "resume a suspended instance",
   "Resumes suspended instance ID by replaying it with the workflow code the host has loaded now\n"
   "(after a determinism diff was fixed, a missing action was registered, ...). An action step\n"
   "that had run out of attempts starts a new round of attempts; an at-most-once action whose\n"
   "outcome was unknown is invoked again.\n\n"
   "Example:\n"
   "  wfhost retry inv-7\n", NULL},
  {"list", cmd_list, 0, 0, list_opts, "list [--status STATUS] [--workflow NAME] [--limit N]",
   "list instances, newest first",
   "Lists instances, newest first, as a table (with --json: an array of objects).\n\n"
   "Options:\n"
   "  --status STATUS   pending, running, waiting, completed, failed, cancelled or suspended\n"
   "  --workflow NAME   only instances of this workflow\n"
   "  --limit N         at most N instances (default 0: all)\n\n"
   "Example:\n"
   "  wfhost list --status suspended --limit 20\n", NULL},
  {"show", cmd_show, 1, 1, no_opts, "show ID", "show an instance and its history",
   "Shows instance ID (status, state, input, data, output or error) and its history, one line per\n"
   "journal entry. With --json: one object including the full history.\n\n"
   "Example:\n"
   "  wfhost show inv-7\n", NULL},
  {"workflows", cmd_workflows, 0, 0, no_opts, "workflows", "list the loaded workflow versions",
   "Lists every workflow version the host loaded (a file per version: order@1.lua, order@2.lua)\n"
   "and every version that unfinished instances still run, with the count of those instances\n"
   "(ACTIVE) and the file it was loaded from. New instances start on the version marked newest;\n"
   "a running instance keeps the version it started on. An instance of a version marked\n"
   "'not loaded' is suspended when it next runs, until a host loads that version again and the\n"
   "instance is retried. With --json: an array of objects.\n\n"
   "Example:\n"
   "  wfhost workflows\n", NULL},
  {"breakers", cmd_breakers, 0, 3, no_opts, "breakers [isolate|close ACTION [KEY]]",
   "show circuit breakers, or open or close one by hand",
   "Without arguments: each circuit breaker the host has written, with its state (closed, open,\n"
   "half_open, isolated), the calls and failures in its sampling window, and until when it is\n"
   "open (with --json: an array of objects). Counts are as of the host's last write.\n\n"
   "  breakers isolate ACTION [KEY]   open the breaker by hand: calls are rejected (and retried\n"
   "                                  later by their policy) until it is closed; survives restarts\n"
   "  breakers close ACTION [KEY]     close it, with an empty window\n\n"
   "Example:\n"
   "  wfhost breakers isolate charge_payment\n", NULL},
  {"schedule", cmd_schedule, 1, 4, schedule_opts,
   "schedule add WORKFLOW CRON [JSON] [--id ID] [--tz ZONE] [--catch-up skip|once] [--overlap skip|allow]"
   " | schedule list | schedule rm ID",
   "start a workflow on a cron schedule; list or remove schedules",
   "  schedule add WORKFLOW CRON [JSON]   start WORKFLOW with input JSON (an object, default {};\n"
   "                                      '-' reads it from stdin) at each firing of CRON; adding an\n"
   "                                      existing id replaces that schedule (it keeps its counters,\n"
   "                                      and its next firing if CRON and the zone are the same)\n"
   "  schedule list                       every schedule: its cron, zone, next and last firing, the\n"
   "                                      instance of the last one, and the firings it skipped\n"
   "  schedule rm ID                      remove a schedule (its instances stay)\n\n"
   "CRON is five fields, minute hour day-of-month month day-of-week (quote it): '*/15 * * * *',\n"
   "'0 2 * * mon-fri', '30 6 1 jan,jul *'; or @hourly, @daily, @weekly, @monthly, @yearly. Each\n"
   "firing starts an instance with the id SCHEDULE_ID@FIRING_TIME (UTC, as 2026-01-02T02:00:00Z),\n"
   "whose input has a field \"schedule\": {\"id\", \"at\", \"at_ms\"}. Works with and without a running\n"
   "host; a running host applies a change within its poll interval. Schedules declared in\n"
   "workflow files (`schedule = ...`) are listed too, and changed only there.\n\n"
   "Options of schedule add:\n"
   "  --id ID               the schedule id (default: the workflow name); 1 to 100 letters, digits,\n"
   "                        '_', '.', ':' or '-'\n"
   "  --tz ZONE             an IANA time zone for CRON, as Europe/Berlin (default UTC)\n"
   "  --catch-up skip|once  firings missed while no host ran (more than 60 s late): skip them\n"
   "                        (counted; the default) or run one instance for the latest\n"
   "  --overlap skip|allow  a firing while the previous instance has not finished: skip it\n"
   "                        (counted; the default) or start it anyway\n\n"
   "Example:\n"
   "  wfhost schedule add nightly_report '0 2 * * *' '{\"recipients\":[\"ops@example.com\"]}' --tz Europe/Berlin\n", NULL},
  {"outbox", cmd_outbox, 0, 3, outbox_opts, "outbox [--failed|--pending] [--limit N] | outbox retry MSGID [SUBSCRIBER]",
   "show undelivered outbox messages, or deliver failed ones again",
   "Without arguments: the messages workflows emitted (ctx:emit) that are not delivered yet, one\n"
   "row per subscriber, in emit order: message id, topic, instance, subscriber, status (pending;\n"
   "failed: a dead letter, its attempts exhausted; unrouted: no subscriber matches its topic yet),\n"
   "failed attempts, the next attempt and the last error (with --json: an array of objects,\n"
   "with the payload). Delivered messages are not kept.\n\n"
   "Options:\n"
   "  --failed          only dead letters\n"
   "  --pending         only pending and unrouted deliveries\n"
   "  --limit N         at most N rows (default 0: all)\n\n"
   "  outbox retry MSGID [SUBSCRIBER]   deliver a failed message again, with a fresh round of\n"
   "                                    attempts (to one subscriber, or to every one it failed for)\n\n"
   "Example:\n"
   "  wfhost outbox --failed\n"
   "  wfhost outbox retry ord-7:4:1\n",
   outbox_flags},
  {"check", cmd_check, 0, 1, no_opts, "check [DIR]", "check workflow files without running them",
   "Checks the workflow files in DIR (default ./workflows): syntax, that each file returns a\n"
   "definition, duplicate names. Prints 'ok: DIR', or each problem as file:line: message on\n"
   "stderr and exits 1. Needs no database.\n\n"
   "Example:\n"
   "  wfhost check ./workflows\n", NULL},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void print_global_help(FILE *f) {
  fprintf(f, "wfhost %s - a durable workflow host\n\n"
             "Usage: wfhost [--db PATH] [--json] COMMAND [ARGS]\n\nCommands:\n", WFHOST_VERSION);
  for (size_t i = 0; i < NCOMMANDS; i++) fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].summary);
  fputs("\nGlobal options (before or after the command):\n"
        "  --db PATH    the database (default: $WFHOST_DB, else ./wfhost.db)\n"
        "  --json       machine-readable output on stdout\n"
        "  -h, --help   this help; 'wfhost COMMAND --help' for a command\n"
        "  --version    print the version\n\n"
        "Exit status: 0 success, 1 failure (a 'wfhost: ...' line on stderr), 2 usage error.\n", f);
}

static void print_command_help(const command *cmd) {
  printf("Usage: wfhost [--db PATH] [--json] %s\n\n%s", cmd->synopsis, cmd->help);
}

static const command *find_command(const char *name) {
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (!strcmp(commands[i].name, name)) return &commands[i];
  return NULL;
}

static int is_option(const char *a) {
  /* "-" is stdin and "-5" a JSON number: both are arguments. */
  return a[0] == '-' && a[1] && !(a[1] >= '0' && a[1] <= '9');
}

/* Parses argv into c. Returns -1 to go on, or an exit status. */
static int parse(int argc, char **argv, cli *c) {
  int help = 0, version = 0, only_args = 0, help_cmd = 0;
  c->pos = calloc((size_t)argc, sizeof *c->pos);
  c->opts = calloc((size_t)argc, sizeof *c->opts);
  if (!c->pos || !c->opts) abort();
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (only_args || !is_option(a)) {
      if (!c->cmd && !help_cmd) {
        if (!strcmp(a, "help")) {
          help_cmd = help = 1;
          continue;
        }
        if (!(c->cmd = find_command(a))) return usage_error("unknown command '%s'", a);
        prog_cmd = c->cmd->name;
      } else if (help_cmd && !c->cmd) {
        if (!(c->cmd = find_command(a))) return usage_error("unknown command '%s'", a);
        prog_cmd = c->cmd->name;
      } else {
        c->pos[c->npos++] = a;
      }
      continue;
    }
    if (!strcmp(a, "--")) {
      only_args = 1;
      continue;
    }
    char name[64];
    const char *eq = strncmp(a, "--", 2) ? NULL : strchr(a, '=');
    snprintf(name, sizeof name, "%.*s", eq ? (int)(eq - a) : (int)strlen(a), a);
    if (!strcmp(name, "-h") || !strcmp(name, "--help")) {
      help = 1;
      continue;
    }
    if (!strcmp(name, "--json") || !strcmp(name, "--version")) {
      if (eq) return usage_error("%s takes no value", name);
      if (name[2] == 'j') c->json = 1;
      else version = 1;
      continue;
    }
    const char *canon = NULL;
    if (c->cmd && c->cmd->flags) {
      for (const char *const *o = c->cmd->flags; *o; o++)
        if (!strcmp(name, *o)) canon = *o;
      if (canon) {
        if (eq) return usage_error("%s takes no value", name);
        c->opts[c->nopts++] = (opt_val){canon, ""};
        continue;
      }
    }
    if (!strcmp(name, "--db")) {
      canon = "--db";
    } else if (c->cmd) {
      for (const char *const *o = c->cmd->opts; *o; o++)
        if (!strcmp(name, *o)) canon = *o;
    }
    if (!canon) return usage_error("unknown option '%s'", name);
    const char *value = eq ? eq + 1 : i + 1 < argc ? argv[++i] : NULL;
    if (!value) return usage_error("%s needs a value", canon);
    if (!strcmp(canon, "--db")) c->db = value;
    else c->opts[c->nopts++] = (opt_val){canon, value};
  }
  if (version) {
    if (c->json) printf("{\"version\":\"%s\"}\n", WFHOST_VERSION);
    else printf("wfhost %s\n", WFHOST_VERSION);
    return EXIT_OK;
  }
  if (help) {
    if (c->cmd) print_command_help(c->cmd);
    else print_global_help(stdout);
    return EXIT_OK;
  }
  if (!c->cmd) return usage_error("no command given");
  if (c->npos < c->cmd->min_pos)
    return usage_error("missing arguments (usage: wfhost %s)", c->cmd->synopsis);
  if (c->npos > c->cmd->max_pos)
    return usage_error("unexpected argument '%s' (usage: wfhost %s)", c->pos[c->cmd->max_pos], c->cmd->synopsis);
  if (!c->db && (c->db = getenv("WFHOST_DB")) && !*c->db) c->db = NULL; /* set but empty: unset */
  if (!c->db) c->db = DEFAULT_DB;
  if (!*c->db) return usage_error("the database path is empty (--db or WFHOST_DB)");
  return -1;
}

int main(int argc, char **argv) {
  cli c = {0};
  int st = parse(argc, argv, &c);
  if (st < 0) st = c.cmd->run(&c);
  free(c.pos);
  free(c.opts);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "wfhost: cannot write the output: %s\n", strerror(errno));
    if (st == EXIT_OK) st = EXIT_FAIL;
  }
  return st;
}

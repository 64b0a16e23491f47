/*
 * wf_cli.h — the output of the `wfhost` command, implemented in wf_cli_print.c and used only
 * by wf_cli.c (the argument parsing and the commands).
 *
 * It provides JSON string escaping and the text and JSON renderings of instances (`list`) and
 * of one instance with its history (`show`). Every function writes to the given stream or to
 * stdout and reports nothing: a write error is caught once, by main()'s final fflush(). The
 * human renderings show stored text on one line per field or cell, with control characters
 * and invalid UTF-8 as '?'; the JSON renderings are valid JSON whatever the database holds.
 *
 * The names carry the wf_cli_ prefix because the command exports its symbols to the plugins
 * it loads (ENABLE_EXPORTS): a generic name could bind a plugin's own function to this one.
 */
#ifndef WF_CLI_H
#define WF_CLI_H

#include <stddef.h>
#include <stdio.h>

#include "wfhost.h"

/* Writes s to f as a JSON string, or null for NULL. Invalid UTF-8 becomes U+FFFD, so the
 * output is always valid JSON. */
void wf_cli_json_str(FILE *f, const char *s);

/* Prints n instances to stdout as the `list` table: a header line, then one line per
 * instance, in the order given. */
void wf_cli_print_list(const wf_info *list, size_t n);

/* Prints n instances to stdout as the `list --json` array, one object per line ("[]" for
 * none), ending with a newline. */
void wf_cli_print_list_json(const wf_info *list, size_t n);

/* Prints an instance and its nh history entries to stdout as `show` does: one labelled field
 * per line, then the history table (history data cut to 100 code points). */
void wf_cli_print_show(const wf_info *in, const wf_history_entry *hist, size_t nh);

/* Prints an instance and its nh history entries to stdout as one `show --json` object on one
 * line, ending with a newline. */
void wf_cli_print_show_json(const wf_info *in, const wf_history_entry *hist, size_t nh);

/* Prints circuit breakers as the `breakers` table, or as a JSON array. */
void wf_cli_print_breakers(const wf_breaker_info *list, size_t n);
void wf_cli_print_breakers_json(const wf_breaker_info *list, size_t n);

/* Prints schedules as the `schedule list` table, or as a JSON array. */
void wf_cli_print_schedules(const wf_schedule_info *list, size_t n);
void wf_cli_print_schedules_json(const wf_schedule_info *list, size_t n);
/* Prints the line `schedule add` answers with: the id and the next firing. */
void wf_cli_print_schedule_added(const wf_schedule_info *s);
/* Prints workflow versions as the `workflows` table, or as a JSON array. */
void wf_cli_print_workflows(const wf_workflow_info *list, size_t n);
void wf_cli_print_workflows_json(const wf_workflow_info *list, size_t n);
/* Prints outbox deliveries as the `outbox` table, or as a JSON array. */
void wf_cli_print_outbox(const wf_outbox_entry *list, size_t n);
void wf_cli_print_outbox_json(const wf_outbox_entry *list, size_t n);

#endif

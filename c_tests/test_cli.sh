#!/bin/sh
# End-to-end test of the `wfhost` command, as an operator uses it (docs/cli.md): usage and
# exit statuses, `check`, the client commands against a running host in another process
# (start, signal, cancel, retry, list, show, breakers, outbox, --json), a suspended instance and `retry`, a
# second host refused, a graceful stop on SIGTERM and a restart after `kill -9`.
#
#   sh c_tests/test_cli.sh WFHOST DEMO_ACTIONS_SO WORKFLOWS_DIR
#
# Each check prints one line; the last line is "N checks, N failed", and the exit status is 1
# if any check failed. It works in a fresh temporary directory, removed when every check
# passed (kept, and named, otherwise). Every wait is bounded; no host is left running.
# POSIX sh with grep/sed/awk only. The checks are `eval`ed strings in single quotes, expanded when
# the check runs (hence SC2016).
# shellcheck disable=SC2016

if [ $# -ne 3 ]; then
  echo "usage: $0 WFHOST DEMO_ACTIONS_SO WORKFLOWS_DIR" >&2
  exit 2
fi
abs() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$(pwd)" "$1" ;; esac; }
WFHOST=$(abs "$1")
PLUGIN=$(abs "$2")
WORKFLOWS=$(abs "$3")
for f in "$WFHOST" "$PLUGIN"; do
  [ -f "$f" ] || { echo "$0: no file $f" >&2; exit 2; }
done
[ -d "$WORKFLOWS" ] || { echo "$0: no directory $WORKFLOWS" >&2; exit 2; }
unset WFHOST_DB

T=$(mktemp -d "${TMPDIR:-/tmp}/wfhost-cli.XXXXXX") || exit 2
DB="$T/wf.db"
WF="$T/workflows"            # a copy: the retry section edits a workflow file
cp -R "$WORKFLOWS" "$WF" || exit 2
OUT="$T/out"
ERR="$T/err"
checks=0
failed=0
host=
hostn=0
finished=0

cleanup() {
  if [ -n "$host" ]; then kill -9 "$host" 2>/dev/null; wait "$host" 2>/dev/null; fi
  if [ "$finished" = 1 ] && [ "$failed" -eq 0 ]; then
    rm -rf "$T"
  else
    echo "test files kept in $T"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# --- helpers ---------------------------------------------------------------------------------

# Runs a command with its stdout in $OUT, stderr in $ERR and exit status in $rc.
run() { last="$*"; "$@" >"$OUT" 2>"$ERR"; rc=$?; }
# The wfhost command on the test database.
wf() { run "$WFHOST" --db "$DB" "$@"; }

# check DESCRIPTION COMMAND...: counts a check that passes if COMMAND succeeds; on failure
# prints the last command run, its exit status, stdout and stderr.
check() {
  desc=$1; shift
  checks=$((checks + 1))
  if "$@"; then
    echo "ok   $checks - $desc"
  else
    failed=$((failed + 1))
    echo "FAIL $checks - $desc"
    echo "       last command: $last (exit status $rc)"
    sed -n '1,15p' "$OUT" 2>/dev/null | cut -c1-1000 | sed 's/^/       stdout| /'
    sed -n '1,15p' "$ERR" 2>/dev/null | cut -c1-1000 | sed 's/^/       stderr| /'
  fi
}
rc_is() { [ "$rc" = "$1" ]; }
out_has() { grep -qF -e "$1" "$OUT"; }
out_lacks() { ! grep -qF -e "$1" "$OUT"; }
out_matches() { grep -q -e "$1" "$OUT"; }
err_has() { grep -qF -e "$1" "$ERR"; }
out_empty() { [ ! -s "$OUT" ]; }
lines() { echo $(($(wc -l <"$1"))); }
# rc N and exactly one line on stderr, "wfhost: ..." containing TEXT.
fails_with() { rc_is "$1" && [ "$(lines "$ERR")" = 1 ] && grep -q '^wfhost: ' "$ERR" && err_has "$2"; }
# Usage error: exit status 2, the message, then the hint line, nothing else.
usage_error() {
  rc_is 2 && [ "$(lines "$ERR")" = 2 ] && grep -q '^wfhost: ' "$ERR" &&
    sed -n 2p "$ERR" | grep -q "^Run 'wfhost .*--help' for" && out_empty
}
count_in_out() { grep -oF -e "$1" "$OUT" | awk 'END { print NR }'; }

now() { date +%s; }
# Polls `wfhost show ID --json` until its output contains TEXT (at most ~10 s; no waiting at
# all when no host runs, as nothing would change).
wait_show() {
  deadline=$(($(now) + 10))
  while :; do
    wf --json show "$1"
    out_has "$2" && return 0
    [ "$(now)" -le "$deadline" ] || return 1
    if [ -z "$host" ] || ! alive "$host"; then
      echo "       (no host is running)" >>"$ERR"
      return 1
    fi
    sleep 0.05
  done
}

# alive PID: the process exists and is not a zombie (a zombie still answers kill -0).
alive() {
  if [ -r "/proc/$1/stat" ]; then
    ! sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | grep -q '^[ZX]'
  else
    kill -0 "$1" 2>/dev/null
  fi
}

# Starts `wfhost run` in the background (stderr to $T/hostN.log), with the options in
# $HOST_ARGS, and waits until it says it runs. Returns 1 if it exits or does not say so
# within ~10 s.
HOST_ARGS=
start_host() {
  hostn=$((hostn + 1))
  hostlog="$T/host$hostn.log"
  # shellcheck disable=SC2086 # $HOST_ARGS: extra options, split on purpose
  "$WFHOST" run --db "$DB" --workflows "$WF" --plugin "$PLUGIN" $HOST_ARGS 2>"$hostlog" &
  host=$!
  last="wfhost run --db $DB --workflows $WF --plugin $PLUGIN $HOST_ARGS (log: $hostlog)"
  rc=running
  deadline=$(($(now) + 10))
  until grep -qs '^wfhost: running workflows from ' "$hostlog"; do
    if ! alive "$host" || [ "$(now)" -gt "$deadline" ]; then
      cp "$hostlog" "$ERR"; : >"$OUT"
      return 1
    fi
    sleep 0.05
  done
  return 0
}

# Sends SIGTERM to the host and waits (at most ~10 s) for it to exit; $rc is its exit status,
# $ERR its log. Kills it with SIGKILL if it does not exit in time.
stop_host() {
  kill -TERM "$host" 2>/dev/null
  deadline=$(($(now) + 10))
  while alive "$host" && [ "$(now)" -le "$deadline" ]; do sleep 0.05; done
  if alive "$host"; then
    kill -9 "$host" 2>/dev/null
    echo "       (the host did not exit within 10 s of SIGTERM: killed)"
  fi
  wait "$host"; rc=$?
  host=
  last="kill -TERM <host> (log: $hostlog)"
  cp "$hostlog" "$ERR"; : >"$OUT"
}

# Kills the host with SIGKILL (a crash).
crash_host() {
  kill -9 "$host" 2>/dev/null
  wait "$host" 2>/dev/null
  host=
}

# --- usage -----------------------------------------------------------------------------------
# The commands run from an empty directory, which must stay empty (no ./wfhost.db created).
mkdir "$T/cwd" "$T/bad"
cd "$T/cwd" || exit 2
echo "# usage"
run "$WFHOST" --help
check "wfhost --help exits 0 and shows the usage" eval 'rc_is 0 && out_has "Usage: wfhost"'
for c in run start signal cancel retry list show workflows outbox schedule check; do
  check "wfhost --help lists '$c'" out_matches "^  $c "
done
run "$WFHOST" --version
check "wfhost --version exits 0 and prints the version" eval 'rc_is 0 && out_matches "^wfhost [0-9][0-9.]*$"'
run "$WFHOST" --json --version
check "wfhost --json --version prints {\"version\":...}" eval 'rc_is 0 && out_matches "^{\"version\":\"[0-9.]*\"}$"'
for c in run start signal cancel retry list show workflows outbox schedule check; do
  run "$WFHOST" "$c" --help
  check "wfhost $c --help exits 0 and shows its usage" eval 'rc_is 0 && out_matches "^Usage: wfhost .*$c"'
done
run "$WFHOST" help signal
check "wfhost help signal shows the usage of signal" eval 'rc_is 0 && out_matches "^Usage: wfhost .*signal ID EVENT"'
run "$WFHOST" bogus
check "an unknown command exits 2 with the message and a one-line hint" eval 'usage_error && err_has "bogus"'
run "$WFHOST" --frob
check "an unknown global option exits 2 with a one-line hint" eval 'usage_error && err_has "--frob"'
run "$WFHOST" list --bogus
check "an unknown option of a command exits 2 with 'wfhost list --help' as the hint" \
  eval 'usage_error && err_has "--bogus" && err_has "wfhost list --help"'
run "$WFHOST" signal
check "a missing argument exits 2 with a one-line hint" usage_error

# --- check -----------------------------------------------------------------------------------
echo "# check"
printf 'return workflow.define {\n  name = = "x",\n}\n' >"$T/bad/bad.lua"
for n in a b; do
  printf 'return workflow.define {\n  name = "dup",\n  version = 1,\n  run = function(ctx, input) return 1 end,\n}\n' \
    >"$T/bad/dup_$n.lua"
done
run "$WFHOST" check "$WORKFLOWS"
check "check on the example workflows exits 0 and prints ok" eval 'rc_is 0 && out_has "ok: $WORKFLOWS"'
run "$WFHOST" check "$T/bad"
check "check on a bad dir exits 1" rc_is 1
check "check prints file:line for the syntax error" err_has "$T/bad/bad.lua:2: "
check "check prints file:line for the duplicate name, naming the other file" \
  eval 'grep -q "^$T/bad/dup_[ab].lua:1: .*duplicate.*dup_[ab].lua:1" "$ERR"'
check "check ends with the count of problems" err_has "wfhost: $T/bad: 2 problems"
run "$WFHOST" --json check "$T/bad"
check "check --json reports ok:false and the problems on stdout (exit 1)" \
  eval 'rc_is 1 && out_has "\"ok\":false" && out_has "bad.lua:2: "'
check "check creates no database file (nor anything else)" eval '[ -z "$(ls -A "$T/cwd")" ] && [ ! -e "$DB" ]'

# --- client commands without a database ------------------------------------------------------
echo "# client commands without a database"
for cmd in "list" "show inv-1" "start invoice_approval" "signal inv-1 Submit" "cancel inv-1" "retry inv-1"; do
  # shellcheck disable=SC2086 # the command and its arguments are split on purpose
  run "$WFHOST" --db "$T/nodb.db" $cmd
  check "'$cmd' on a missing database exits 1 with one line 'wfhost: no database at ...'" \
    fails_with 1 "no database at '$T/nodb.db'"
  check "'$cmd' on a missing database creates no file" \
    eval '[ -z "$(ls -A "$T/cwd")" ] && ! ls "$T"/nodb.db* >/dev/null 2>&1'
done
WFHOST_DB="$T/env.db" run "$WFHOST" list
check "without --db, the client uses \$WFHOST_DB (and refuses it if missing)" fails_with 1 "no database at '$T/env.db'"
cd "$T" || exit 2

# --- a host running in the background --------------------------------------------------------
echo "# a running host and the client commands"
check "wfhost run starts and says it runs" start_host
check "the host's first line names the workflows dir and the database" \
  grep -q "^wfhost: running workflows from $WF on $DB (pid $host)" "$hostlog"

wf start invoice_approval '{"id":"INV-1"}' --id inv-1
check "start --id inv-1 exits 0 and prints inv-1" eval 'rc_is 0 && [ "$(cat "$OUT")" = inv-1 ]'
wf start no_such_workflow '{}'
check "start of an unknown workflow exits 1 naming it" fails_with 1 "unknown workflow 'no_such_workflow'"
wf start invoice_approval '{"id":'
check "start with malformed JSON exits 1 with 'not valid JSON'" fails_with 1 "not valid JSON"
check "the refused starts created no instance" eval 'wf --json list; [ "$(count_in_out "\"workflow\":")" = 1 ]'
t0=$(now)
wf signal inv-1 Submit '{"user":"a"}'
check "signal inv-1 Submit exits 0 and prints nothing" eval 'rc_is 0 && out_empty'
check "the running host picks the signal up: inv-1 notifies, then waits for Approve|Reject" \
  wait_show inv-1 '"waiting_for":"event Approve|Reject'
check "it did so promptly: within 3 s (the host polls every 10 ms)" [ "$(($(now) - t0))" -le 3 ]
check "inv-1 is waiting in the state awaiting_approval" \
  eval 'out_has "\"status\":\"waiting\"" && out_has "\"state\":\"awaiting_approval\""'
wf signal inv-1 Approve '{"user":"b"}'
check "signal inv-1 Approve exits 0" rc_is 0
check "inv-1 completes" wait_show inv-1 '"status":"completed"'
check "the host logs the start and the completion of inv-1" \
  eval 'grep -q "INFO  *\[inv-1\] started invoice_approval v1" "$hostlog" && grep -q "INFO  *\[inv-1\] completed" "$hostlog"'

wf --json show inv-1
check "show --json exits 0 with one line" eval 'rc_is 0 && [ "$(lines "$OUT")" = 1 ]'
for f in id workflow version status state data output error history; do
  check "show --json has the field '$f'" out_has "\"$f\":"
done
check "show --json: id, workflow, version" \
  eval 'out_has "\"id\":\"inv-1\"" && out_has "\"workflow\":\"invoice_approval\"" && out_has "\"version\":1"'
check "show --json: status completed, state approved" \
  eval 'out_has "\"status\":\"completed\"" && out_has "\"state\":\"approved\""'
check "show --json: data is the workflow's ctx.data" out_has '"data":{"submitted_by":"a"}'
check "show --json: output is the workflow's result" \
  eval 'out_has "\"decision\":\"Approve\"" && out_has "\"by\":\"b\"" && out_has "\"error\":null"'
sed 's/.*"history":\[//' "$OUT" >"$T/history"
for f in seq kind name at data; do
  check "show --json: history entries have '$f'" grep -qF "\"$f\":" "$T/history"
done
check "show --json: history has the action notify and its result" \
  eval 'out_has "\"kind\":\"action\",\"name\":\"notify\"" && out_has "\"kind\":\"action_result\",\"name\":\"notify\""'
check "show --json: history has the events and the completion" \
  eval 'out_has "\"kind\":\"event\",\"name\":\"Submit\"" && out_has "\"kind\":\"event\",\"name\":\"Approve\"" && out_has "\"kind\":\"completed\""'
wf show inv-1
check "show (text) exits 0 with status, state and the history" \
  eval 'rc_is 0 && out_matches "^status: *completed" && out_matches "^state: *approved" && out_matches "^history ([0-9]* entries):"'
check "show (text) lists the notify action in the history" out_matches "action  *notify"

printf '{"id":"INV-S"}\n' >"$T/input.json"
run "$WFHOST" --db "$DB" start invoice_approval - --id inv-stdin <"$T/input.json"
check "start reads the input from stdin with '-'" eval 'rc_is 0 && [ "$(cat "$OUT")" = inv-stdin ]'
check "the instance started from stdin waits for Submit with that input" \
  eval 'wait_show inv-stdin "\"waiting_for\":\"event Submit\"" && out_has "\"input\":{\"id\":\"INV-S\"}"'

wf workflows
check "workflows (text) lists each loaded version, the newest marked, with its file" \
  eval 'rc_is 0 && out_matches "^WORKFLOW  *VERSION  *LOADED  *ACTIVE  *FILE" && out_matches "^invoice_approval  *1  *newest  *[0-9]  *$WF/invoice_approval.lua$"'
wf --json workflows
check "workflows --json: an array of objects" \
  eval 'rc_is 0 && out_has "{\"workflow\":\"invoice_approval\",\"version\":1,\"loaded\":true,\"newest\":true,\"active\":"'

wf --json list
check "list --json exits 0 with an array, one instance per line" \
  eval 'rc_is 0 && [ "$(sed -n 1p "$OUT")" = "[" ] && [ "$(sed -n "\$p" "$OUT")" = "]" ]'
check "list --json contains inv-1" out_has '"id":"inv-1"'
check "list --json has no history" out_lacks '"history"'
wf list
check "list (text) has a header and the instances" \
  eval 'rc_is 0 && out_matches "^ID  *WORKFLOW  *VERSION  *STATUS  *STATE" && out_matches "^inv-1  *invoice_approval  *1  *completed  *approved" && out_matches "^inv-stdin  *invoice_approval  *1  *waiting  *draft"'
wf list --status completed
check "list --status completed shows inv-1 and not inv-stdin" \
  eval 'rc_is 0 && out_matches "^inv-1 " && ! out_matches "^inv-stdin "'
wf list --status waiting
check "list --status waiting shows inv-stdin and not inv-1" \
  eval 'rc_is 0 && out_matches "^inv-stdin " && ! out_matches "^inv-1 "'
wf list --status failed
check "list with no match: empty stdout, exit 0, 'no instances' on stderr" \
  eval 'rc_is 0 && out_empty && err_has "wfhost: no instances"'
wf --json list --status failed
check "list --json with no match prints []" eval 'rc_is 0 && [ "$(cat "$OUT")" = "[]" ]'
wf list --status bogus
check "list --status bogus is a usage error (exit 2)" usage_error

wf signal inv-1 Approve '{"user":"b"}'
check "signal to a completed instance exits 1 saying it completed" fails_with 1 "'inv-1' has completed"
wf signal ghost X
check "signal ghost exits 1 with \"no instance 'ghost'\"" fails_with 1 "no instance 'ghost'"
wf show ghost
check "show ghost exits 1 with \"no instance 'ghost'\"" fails_with 1 "no instance 'ghost'"
wf retry inv-1
check "retry of an instance that is not suspended exits 1" fails_with 1 "not suspended"

wf start invoice_approval '{"id":"INV-2"}' --id inv-2
check "start inv-2 exits 0" rc_is 0
check "inv-2 waits for Submit" wait_show inv-2 '"status":"waiting"'
wf cancel inv-2
check "cancel inv-2 exits 0 and prints nothing" eval 'rc_is 0 && out_empty'
check "inv-2 ends cancelled" wait_show inv-2 '"status":"cancelled"'
wf cancel inv-2
check "cancel of a cancelled instance exits 1" fails_with 1 "cancelled"
wf signal inv-2 Submit
check "signal to a cancelled instance exits 1" fails_with 1 "cancelled"

wf start invoice_approval '{"id":"INV-1"}' --id inv-1
check "start of an existing id exits 0, prints the id and notes it on stderr" \
  eval 'rc_is 0 && [ "$(cat "$OUT")" = inv-1 ] && err_has "already exists"'
wf --json start invoice_approval '{"id":"INV-1"}' --id inv-1
check "start --json of an existing id says created:false" eval 'rc_is 0 && out_has "\"created\":false"'
wf start user_onboarding '{}' --id inv-1
check "start of an existing id with another workflow exits 1" fails_with 1 "inv-1"
wf --json list
check "list shows inv-1 once" eval 'rc_is 0 && [ "$(count_in_out "\"id\":\"inv-1\"")" = 1 ]'
wf show inv-1
check "inv-1 is still completed, unchanged" out_matches "^status: *completed"

# --- circuit breakers -------------------------------------------------------------------------
# An operator isolates the breaker of `ship`: an order then waits at its ship step, rejected
# without the action being invoked, until the breaker is closed.
echo "# circuit breakers"
wait_breakers() { # like wait_show, for `wfhost --json breakers`
  deadline=$(($(now) + 10))
  until wf --json breakers && out_has "$1"; do
    [ "$(now)" -le "$deadline" ] || return 1
    sleep 0.05
  done
}
wf breakers isolate ship
check "breakers isolate ship exits 0 and says it is requested" eval 'rc_is 0 && out_has "isolating ship: requested"'
check "the host applies it: breakers --json shows ship isolated" wait_breakers '"action":"ship","key":"","state":"isolated"'
wf breakers
check "breakers (text) has a header and the ship row" \
  eval 'rc_is 0 && out_matches "^ACTION  *KEY  *STATE  *CALLS  *FAILURES" && out_matches "^ship  *-  *isolated"'
wf start order_fulfillment '{"id":"A-1","customer":"c-1","address":"x","cooling_off":"1ms","items":[{"sku":"tea","qty":1,"price":2}]}' --id ord-1
check "an order waits at its ship step, rejected by the isolated breaker" \
  wait_show ord-1 '"waiting_for":"retry of action ship (attempt 1) at '
check "its history records the rejection, and ship was not invoked" \
  eval 'out_has "\"kind\":\"rejected\",\"name\":\"ship\"" && ! grep -q "\[demo\] ship" "$hostlog"'
check "the payment breaker is per customer: c-1 has its own row" \
  eval 'wf --json breakers; out_has "\"action\":\"charge_payment\",\"key\":\"c-1\",\"state\":\"closed\""'
wf breakers close ship
check "breakers close ship exits 0" rc_is 0
check "the order ships once the breaker is closed" wait_show ord-1 '"status":"completed"'
check "with a tracking number from the ship action" out_has '"tracking":"TRK-'
wf breakers frob
check "breakers frob is a usage error" usage_error
wf breakers isolate
check "breakers isolate without an action is a usage error" usage_error

# --- schedules ---------------------------------------------------------------------------------
echo "# schedules"
wf schedule list
check "schedule list shows the schedule nightly_report.lua declares" \
  eval 'rc_is 0 && out_matches "^ID  *WORKFLOW  *CRON  *ZONE  *NEXT" && out_matches "^nightly_report  *nightly_report  *0 2 \* \* \*  *Europe/Berlin  *20[0-9-]*T[0-9:]*Z  *-  *-  *0$"'
wf schedule add invoice_approval '*/15 * * * *' '{"id":"INV-S","amount":3}' --id inv-every15 --tz America/New_York \
  --catch-up once --overlap allow
check "schedule add prints the id and the next firing" \
  eval 'rc_is 0 && out_matches "^inv-every15: next firing at 20[0-9-]*T[0-9][0-9]:[0-5][05]:00Z (cron in America/New_York)$"'
wf --json schedule list
check "schedule list --json has it, with its options and input" \
  out_has '{"id":"inv-every15","workflow":"invoice_approval","cron":"*/15 * * * *","timezone":"America/New_York","input":{"id":"INV-S","amount":3},"catch_up":"once","overlap":"allow","origin":"operator",'
check "and the definition's schedule with origin definition" out_has '"id":"nightly_report","workflow":"nightly_report","cron":"0 2 * * *","timezone":"Europe/Berlin","input":{"recipients":["ops@example.com"]},"catch_up":"once","overlap":"skip","origin":"definition"'
echo '{"id":"INV-T"}' >"$T/sched.json"
run "$WFHOST" --db "$DB" schedule add invoice_approval @hourly - --id inv-hourly <"$T/sched.json"
check "schedule add reads the input from stdin with -" rc_is 0
wf --json schedule list
check "with that input" out_has '"id":"inv-hourly","workflow":"invoice_approval","cron":"@hourly","timezone":"UTC","input":{"id":"INV-T"}'
wf schedule add invoice_approval '*/0 * * * *'
check "a bad cron exits 1 naming the field" fails_with 1 'cron "*/0 * * * *": minute: step must be >= 1'
wf schedule add invoice_approval '0 0 * * *' --tz Europe/Atlantis
check "an unknown zone exits 1" fails_with 1 'unknown time zone "Europe/Atlantis"'
wf schedule add no_such_workflow '@daily'
check "an unknown workflow exits 1" fails_with 1 "unknown workflow 'no_such_workflow'"
wf schedule add invoice_approval '@daily' '[1]'
check "an input that is not an object exits 1" fails_with 1 'must be a JSON object'
wf schedule add invoice_approval '@daily' --catch-up always
check "--catch-up always is a usage error" usage_error
wf schedule add invoice_approval
check "schedule add without a cron is a usage error" usage_error
wf schedule list --tz UTC
check "--tz with list is a usage error" usage_error
wf schedule rm nightly_report
check "the definition's schedule cannot be removed" fails_with 1 'remove its `schedule` field'
wf schedule rm inv-every15
check "schedule rm exits 0 and prints nothing" eval 'rc_is 0 && out_empty'
wf --json schedule rm inv-hourly
check "schedule rm --json prints ok" eval 'rc_is 0 && out_has "{\"ok\":true,\"id\":\"inv-hourly\"}"'
wf schedule rm inv-every15
check "removing it again exits 1" fails_with 1 "no schedule 'inv-every15'"
wf --json schedule list
check "only the definition's schedule is left" eval 'rc_is 0 && [ "$(count_in_out "\"id\":")" = 1 ]'
check "the host logged no schedule error" eval '! grep -q "schedule.*not\|does not fire" "$hostlog"'

# --- the outbox -------------------------------------------------------------------------------
# Orders emit order.shipped (the demo plugin's shipping_feed takes it, refusing the address
# "nowhere" twice, 200 ms apart: then a dead letter) and order.cancelled (no subscriber).
echo "# outbox"
wait_outbox() { # polls `wfhost --json outbox ARGS...` (after the first) until it contains $1
  want=$1; shift
  deadline=$(($(now) + 10))
  until wf --json outbox "$@" && out_has "$want"; do
    [ "$(now)" -le "$deadline" ] || return 1
    sleep 0.05
  done
}
feed_lines() { grep -c "\[demo\] feed order.shipped $1 attempt $2 " "$hostlog"; }
check "ord-1's order.shipped went to the feed once, after it shipped" eval '[ "$(feed_lines ord-1:4:1 1)" = 1 ]'
wf outbox --failed
check "no failed delivery yet: exit 0, a note on stderr" eval 'rc_is 0 && out_empty && err_has "no failed delivery"'
wf start order_fulfillment '{"id":"A-2","customer":"c-2","address":"nowhere","cooling_off":"1ms","items":[{"sku":"tea","qty":1,"price":2}]}' --id ord-2
check "ord-2 ships" wait_show ord-2 '"status":"completed"'
check "its history has the emit, with the message id and payload" \
  out_has '"kind":"emit","name":"order.shipped","at":'
check "the feed refuses it twice, then it is a dead letter" wait_outbox '"id":"ord-2:4:1","topic":"order.shipped","instance":"ord-2","subscriber":"shipping_feed","status":"failed","attempts":2,"next_attempt":null,"last_error":"bad_address: the feed refuses the address '"'nowhere'"'"' --failed
check "two attempts, each once" eval '[ "$(feed_lines ord-2:4:1 1)" = 1 ] && [ "$(feed_lines ord-2:4:1 2)" = 1 ]'
wf outbox
check "outbox (text) has a header and the dead letter" \
  eval 'rc_is 0 && out_matches "^MESSAGE  *TOPIC  *INSTANCE  *SUBSCRIBER  *STATUS  *ATTEMPTS  *NEXT ATTEMPT  *LAST ERROR" &&
        out_matches "^ord-2:4:1  *order.shipped  *ord-2  *shipping_feed  *failed  *2  *-  *bad_address: the feed refuses"'
wf outbox retry ord-2:4:1
check "outbox retry exits 0 and says it is requested" eval 'rc_is 0 && out_has "retrying message ord-2:4:1: requested"'
check "the host delivers it again: a fresh round of two attempts" \
  eval 'deadline=$(($(now) + 10)); until [ "$(feed_lines ord-2:4:1 2)" = 2 ] || [ "$(now)" -gt "$deadline" ]; do sleep 0.05; done;
        [ "$(feed_lines ord-2:4:1 1)" = 2 ] && [ "$(feed_lines ord-2:4:1 2)" = 2 ]'
check "and keeps it as a dead letter again" wait_outbox '"id":"ord-2:4:1","topic":"order.shipped","instance":"ord-2","subscriber":"shipping_feed","status":"failed","attempts":2' --failed
wf outbox retry ord-1:4:1
check "retry of a delivered message exits 1: no failed delivery" fails_with 1 "message 'ord-1:4:1' has no failed delivery"
wf start order_fulfillment '{"id":"A-3","customer":"c-3","address":"x","cooling_off":"1h","items":[{"sku":"tea","qty":1,"price":2}]}' --id ord-3
check "ord-3 waits out its cooling-off" wait_show ord-3 '"waiting_for":"event CancelOrder'
wf signal ord-3 CancelOrder
check "ord-3 is cancelled by the customer" wait_show ord-3 '"state":"cancelled_by_customer"'
check "order.cancelled has no subscriber: pending as unrouted" \
  wait_outbox '"topic":"order.cancelled","instance":"ord-3","subscriber":null,"status":"unrouted","attempts":0' --pending
check "--pending lists no dead letter" out_lacks '"status":"failed"'
wf --json outbox --limit 1
check "--limit 1 lists one row, the oldest" eval 'rc_is 0 && [ "$(count_in_out "\"id\":")" = 1 ] && out_has "ord-2:4:1"'
wf outbox --failed --pending
check "--failed with --pending is a usage error" usage_error
wf outbox frob
check "outbox frob is a usage error" usage_error
wf outbox retry
check "outbox retry without a message id is a usage error" usage_error
wf outbox --failed=yes
check "a flag with a value is a usage error" usage_error

# --- a second host ---------------------------------------------------------------------------
echo "# a second host"
run timeout 10 "$WFHOST" run --db "$DB" --workflows "$WF" --plugin "$PLUGIN"
check "run on a database another host holds exits 1 about the other host" \
  eval 'rc_is 1 && err_has "another wfhost host is running on $DB (pid $host)"'
check "the first host still runs" alive "$host"

# --- SIGTERM ---------------------------------------------------------------------------------
echo "# SIGTERM"
wf start invoice_approval '{"id":"INV-3"}' --id inv-3
check "start inv-3 exits 0" rc_is 0
check "inv-3 waits for Submit" wait_show inv-3 '"status":"waiting"'
wf signal inv-3 Submit '{"user":"c"}'
check "signal inv-3 Submit right before SIGTERM exits 0" rc_is 0
wf start invoice_approval '{"id":"INV-4"}' --id term-1
check "start term-1 right before SIGTERM exits 0" rc_is 0
stop_host
check "on SIGTERM run exits 0" rc_is 0
check "on SIGTERM the host prints 'wfhost: stopped'" err_has "wfhost: stopped"
wf list
check "term-1 is in list after the host stopped" out_matches "^term-1 "

# --- kill -9 ---------------------------------------------------------------------------------
echo "# kill -9 and restart"
check "a new host starts on the same database" start_host
check "the new host applies the request sent before SIGTERM: inv-3 awaits approval" \
  wait_show inv-3 '"waiting_for":"event Approve|Reject'
check "the new host runs term-1: it waits for Submit" wait_show term-1 '"waiting_for":"event Submit"'
crash_host
wf signal inv-3 Approve '{"user":"d"}'
check "signal while no host runs (after kill -9) exits 0" rc_is 0
wf schedule add invoice_approval '0 12 * * mon-fri' --id offline-sched
check "schedule add while no host runs exits 0" rc_is 0
check "a host starts after kill -9" start_host
check "the signalled instance completes after the crash" wait_show inv-3 '"status":"completed"'
check "its output has the approver" out_has '"by":"d"'
check "the notify action ran once (not repeated after the crash)" \
  eval '[ "$(count_in_out "\"kind\":\"action\",\"name\":\"notify\"")" = 1 ]'
wf --json schedule list
check "the schedule added while no host ran is there, with its next firing" \
  out_matches '"id":"offline-sched","workflow":"invoice_approval","cron":"0 12 \* \* mon-fri".*"next_at":"20[0-9-]*T12:00:00.000Z"'
wf schedule rm offline-sched
check "and can be removed under the new host" rc_is 0
wf signal term-1 Submit
check "term-1 still takes events" rc_is 0
check "term-1 awaits approval" wait_show term-1 '"waiting_for":"event Approve|Reject'

# --- a suspended instance and retry -----------------------------------------------------------
# sus-1 waits for Approve after the notify action (history step 2). The workflow file is then
# changed to call escalate at that step; replaying sus-1 against it must suspend it.
echo "# suspended and retry"
wf start invoice_approval '{"id":"INV-5"}' --id sus-1
check "start sus-1 exits 0" rc_is 0
wf signal sus-1 Submit '{"user":"e"}'
check "sus-1 awaits approval (notify recorded)" \
  eval 'wait_show sus-1 "\"waiting_for\":\"event Approve|Reject" && out_has "\"kind\":\"action_result\",\"name\":\"notify\""'
stop_host
check "SIGTERM: run exits 0 and prints 'wfhost: stopped'" eval 'rc_is 0 && err_has "wfhost: stopped"'
cp "$WF/invoice_approval.lua" "$T/invoice_approval.lua.orig"
sed 's/ctx\.actions\.notify/ctx.actions.escalate/' "$T/invoice_approval.lua.orig" >"$WF/invoice_approval.lua"
check "the workflow file now calls escalate instead of notify" \
  eval 'grep -q "ctx.actions.escalate { to = \"manager\"" "$WF/invoice_approval.lua"'
check "a host starts with the changed workflow" start_host
wf signal sus-1 Approve '{"user":"f"}'
check "signal sus-1 Approve exits 0" rc_is 0
check "replay against the changed code suspends sus-1" wait_show sus-1 '"status":"suspended"'
check "its error says non-determinism" out_has 'non-determinism'
check "its error names both actions" eval 'out_has "notify" && out_has "escalate"'
check "its history records the suspension" out_has '"kind":"suspended"'
check "the host logs the suspension as a warning" grep -q "WARN  *\[sus-1\] suspended: non-determinism" "$hostlog"
wf show sus-1
check "show (text) prints the error" out_matches "^error: *non-determinism"
wf list --status suspended
check "list --status suspended shows sus-1" out_matches "^sus-1 "
wf signal sus-1 Approve '{"user":"g"}'
check "a suspended instance still takes events (kept in its inbox)" rc_is 0
stop_host
check "SIGTERM: run exits 0 again" eval 'rc_is 0 && err_has "wfhost: stopped"'
cp "$T/invoice_approval.lua.orig" "$WF/invoice_approval.lua"
check "a host starts with the restored workflow" start_host
wf show sus-1
check "sus-1 stays suspended until retried" out_matches "^status: *suspended"
wf retry sus-1
check "retry sus-1 exits 0 and prints nothing" eval 'rc_is 0 && out_empty'
check "sus-1 completes after retry" wait_show sus-1 '"status":"completed"'
check "with the first Approve sent while it was suspended" out_has '"by":"f"'
check "the notify action is not repeated by the retry" \
  eval '[ "$(count_in_out "\"kind\":\"action\",\"name\":\"notify\"")" = 1 ]'
check "and escalate was never called" out_lacks '"name":"escalate"'
wf retry sus-1
check "retry of the completed instance exits 1" fails_with 1 "not suspended"
stop_host
check "the host exits 0 on SIGTERM" eval 'rc_is 0 && err_has "wfhost: stopped"'

# --- versions side by side, a divergence, a patched change ---------------------------------------
# greet@1 runs g-1 and g-4; greet@2 is deployed beside it. greet@1 is then changed in a way
# its history cannot replay (g-1 is suspended with the diff), and fixed with ctx:patched: g-1,
# already past the change, keeps the old path; g-4, not there yet, takes the new one.
echo "# versions, divergence and ctx:patched"
greet() { # greet VERSION STEP_ONE: a greet definition whose first step after 'go' is STEP_ONE
  printf '%s\n' "return workflow.define { name = \"greet\", version = $1, run = function(ctx)" \
    '  ctx:progress(10, "waiting for go")' '  ctx:wait_for("go")' "  $2" \
    '  ctx:progress(50, "half way")' '  ctx:wait_for("go")' "  return \"v$1\"" 'end }'
}
greet 1 'ctx.actions.echo { step = "one" }' >"$WF/greet@1.lua"
check "a host starts with greet@1.lua" start_host
wf start greet --id g-1
wf start greet --id g-4
check "g-1 and g-4 start and wait for go" eval 'wait_show g-1 "\"status\":\"waiting\"" && wait_show g-4 "\"status\":\"waiting\""'
check "show --json has the progress and its message" out_has '"progress":10,"progress_message":"waiting for go"'
wf list --workflow greet
check "list has a PROGRESS column when an instance reports progress" \
  eval 'out_matches "^ID  *WORKFLOW  *VERSION  *STATUS  *STATE  *PROGRESS  *UPDATED" && out_matches "^g-1  *greet  *1  *waiting  *-  *10%"'
wf signal g-1 go
check "g-1 passes go, calls echo, and reports half way" wait_show g-1 '"progress":50,'
wf show g-1
check "show (text) prints the progress line" out_matches "^progress: *50% half way$"
stop_host
greet 2 'ctx.actions.echo { step = "two" }' >"$WF/greet@2.lua"
check "a host starts with greet@1.lua and greet@2.lua side by side" start_host
wf start greet --id g-2
check "a new instance starts on the newest version" wait_show g-2 '"version":2'
wf workflows
check "workflows lists both versions, 1 with its two instances, 2 the newest" \
  eval 'out_matches "^greet  *1  *yes  *2  *$WF/greet@1.lua$" && out_matches "^greet  *2  *newest  *1  *$WF/greet@2.lua$"'
wf list --workflow greet
check "list shows the version of each instance" eval 'out_matches "^g-2  *greet  *2 " && out_matches "^g-1  *greet  *1 "'
stop_host
greet 1 'ctx.actions.log { message = "one" }' >"$WF/greet@1.lua"
check "a host starts with an incompatible greet@1.lua" start_host
wf signal g-1 go
check "replaying g-1 against it suspends it" wait_show g-1 '"status":"suspended"'
wf show g-1
check "show prints the diff: the recorded action and the one the code now calls" \
  out_matches "^error: *non-determinism at step 2: history has action \`echo\`, the code now calls action \`log\`"
check "g-4, not past the change, is not disturbed" eval 'wf --json show g-4; out_has "\"status\":\"waiting\""'
stop_host
greet 1 'if ctx:patched("log-not-echo") then ctx.actions.log { message = "one" } else ctx.actions.echo { step = "one" } end' \
  >"$WF/greet@1.lua"
run "$WFHOST" run --db "$DB" --workflows "$WF" --history-warn 0
check "run --history-warn 0 is a usage error" usage_error
HOST_ARGS="--history-warn 8"
check "a host starts with greet@1.lua guarded by ctx:patched (and --history-warn 8)" start_host
wf retry g-1
check "retry g-1: it completes on the old path" wait_show g-1 '"status":"completed"'
check "g-1 took the go sent while it was suspended and returned v1" \
  eval 'out_has "\"output\":\"v1\"" && out_lacks "\"kind\":\"patch\"" && out_lacks "\"name\":\"log\""'
wf signal g-4 go
check "g-4 reaches the change live: the patch entry, then the new action" \
  eval 'wait_show g-4 "\"progress\":50," && out_has "\"kind\":\"patch\",\"name\":\"log-not-echo\"" && out_has "\"kind\":\"action\",\"name\":\"log\""'
wf signal g-4 go
check "g-4 completes" wait_show g-4 '"status":"completed"'
wf show g-1
check "show warns about a history past --history-warn" \
  out_matches "^history: *[0-9]* entries (warning at 8, limit 100,000): consider ctx:continue_as_new"
check "the host logged the warning" grep -q "WARN  *\[g-1\] history has [0-9]* entries (warning at 8" "$hostlog"
HOST_ARGS=
stop_host
check "the last host exits 0 on SIGTERM" eval 'rc_is 0 && err_has "wfhost: stopped"'
check "no host log has a sanitizer report" eval '! grep -lE "Sanitizer|runtime error:" "$T"/host*.log'

finished=1
echo "$checks checks, $failed failed"
[ "$failed" -eq 0 ]

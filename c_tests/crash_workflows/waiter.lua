-- test_crash: record (seq 1), wait for "go" (seq 2), record again (seq 3), return the
-- event's data.
return workflow.define {
  name = "waiter",
  version = 1,
  run = function(ctx, input)
    ctx.actions.record { wf = "waiter", phase = 1 }
    local ev = ctx:wait_for("go")
    ctx.actions.record { wf = "waiter", phase = 2 }
    return ev.data
  end,
}

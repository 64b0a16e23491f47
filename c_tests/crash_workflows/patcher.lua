-- test_crash: record (seq 1), report progress, take the new path of a patched change
-- (a patch entry, then record at seq 2), report progress again, return the answer.
return workflow.define {
  name = "patcher",
  version = 1,
  run = function(ctx, input)
    ctx.actions.record { wf = "patcher", phase = 1 }
    ctx:progress(25, "recorded")
    local new = ctx:patched("phase-two")
    if new then
      ctx.actions.record { wf = "patcher", phase = "new" }
    else
      ctx.actions.record { wf = "patcher", phase = "old" }
    end
    ctx:progress(100, new and "took the new path" or "took the old path")
    return new
  end,
}

-- bench_loop: input.steps sequential `echo` actions, then a wait for "go". After a restart,
-- the signal makes the host rebuild the instance by replaying every step (the replay
-- workload of bench/wfbench.c).
return workflow.define {
  name = "bench_loop",
  version = 1,
  run = function(ctx, input)
    local sum = 0
    for i = 1, input.steps do
      local r = ctx.actions.echo { i = i }
      sum = sum + r.i
    end
    local ev = ctx:wait_for("go")
    return { sum = sum, go = ev.data.k }
  end,
}

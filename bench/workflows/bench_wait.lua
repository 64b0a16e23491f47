-- bench_wait: parks on the event "go" and returns its data. Used by the w2 and park
-- workloads of bench/wfbench.c.
return workflow.define {
  name = "bench_wait",
  version = 1,
  run = function(ctx, input)
    local ev = ctx:wait_for("go")
    return { n = input.n, go = ev.data.k }
  end,
}

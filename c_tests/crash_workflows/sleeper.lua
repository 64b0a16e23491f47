-- test_crash: record (seq 1), sleep input.ms milliseconds on a durable timer (seq 2),
-- record again (seq 3).
return workflow.define {
  name = "sleeper",
  version = 1,
  run = function(ctx, input)
    ctx.actions.record { wf = "sleeper", phase = 1 }
    ctx:sleep(input.ms .. "ms")
    ctx.actions.record { wf = "sleeper", phase = 2 }
    return { slept = input.ms }
  end,
}

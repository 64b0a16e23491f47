-- test_crash: one `flaky` action (its first attempt fails), retried after input.delay_ms
-- by a per-call retry policy without jitter; returns the action's result.
return workflow.define {
  name = "backoff",
  version = 1,
  run = function(ctx, input)
    return ctx.actions.flaky({ n = 1 }, {
      retry = { initial_delay = input.delay_ms / 1000, backoff = "constant", jitter = "none" },
    })
  end,
}

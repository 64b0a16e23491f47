-- test_crash: input.n sequential `record` actions (seq 1..n); returns the count and the
-- idempotency key each step's result carried, in order.
return workflow.define {
  name = "steps",
  version = 1,
  run = function(ctx, input)
    local keys = {}
    for i = 1, input.n do
      local r = ctx.actions.record { wf = "steps", step = i }
      keys[i] = r.key
    end
    return { n = #keys, keys = keys }
  end,
}

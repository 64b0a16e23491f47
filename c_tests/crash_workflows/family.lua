-- test_crash: starts input.n children (`steps` with n = 2 each), one after each of its own
-- `record` steps, then joins their results; returns how many steps they made in all.
return workflow.define {
  name = "family",
  version = 1,
  run = function(ctx, input)
    local kids = {}
    for i = 1, input.n do
      ctx.actions.record { wf = "family", kid = i }
      kids[i] = ctx:start_child("steps", { n = 2 })
    end
    local total = 0
    for i = 1, #kids do total = total + kids[i]:result().n end
    return { total = total }
  end,
}

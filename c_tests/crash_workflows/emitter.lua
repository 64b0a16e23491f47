-- test_crash: emits input.n messages to the outbox in one step (message ids "<id>:0:1" ..
-- "<id>:0:<n>"), then completes.
return workflow.define {
  name = "emitter",
  version = 1,
  run = function(ctx, input)
    for i = 1, input.n do ctx:emit("crash.msg", { i = i }) end
    return input.n
  end,
}

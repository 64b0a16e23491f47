-- bench3: three sequential steps through the built-in `echo` action (params in, result
-- out). Used by the w1 and seq workloads of bench/wfbench.c.
return workflow.define {
  name = "bench3",
  version = 1,
  run = function(ctx, input)
    local a = ctx.actions.echo { step = 1, n = input.n }
    local b = ctx.actions.echo { step = 2, n = a.n }
    local c = ctx.actions.echo { step = 3, n = b.n }
    return { n = c.n, steps = c.step }
  end,
}

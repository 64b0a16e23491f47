-- The testing kit's own behaviour: virtual time, mocked actions and faults, restarts, and
-- replay checks.
local wt = require "workflow.testing"

local FIXTURES = "spec/fixtures/workflows"

local write = require("support").write

describe("workflow.testing #unit", function()
  local env
  after_each(function() if env then env:close() end env = nil end)

  describe("virtual time", function()
    it("fires timers in due order, with the clock at each due time", function()
      env = wt.env { workflows = FIXTURES }
      local t0 = env:now()
      local run = env:start("reminders", { every = "1h", who = "a" })
      env:advance("3h")
      assert.are.same({ t0 + 3600, t0 + 7200, t0 + 10800 }, run:data().at)
      assert.spy(env.actions.remind).was.called(3)
      assert.are.equal(t0 + 3 * 3600, env:now())
    end)

    it("interleaves the timers of several instances by due time", function()
      env = wt.env { workflows = FIXTURES }
      env:start("reminders", { every = "25m", who = "slow" })
      env:start("reminders", { every = "10m", who = "fast" })
      env:advance("1h")
      local who = {}
      for i = 1, #env.actions.remind.calls do who[i] = env.actions.remind:params(i).who end
      -- fast at 10, 20, 30, 40, 50, 60; slow at 25, 50 (armed before fast's, so it goes first)
      assert.are.same({ "fast", "fast", "slow", "fast", "fast", "slow", "fast", "fast" }, who)
    end)

    it("fires nothing before it is due", function()
      env = wt.env { workflows = FIXTURES }
      local run = env:start("reminders", { every = "1h" })
      env:advance("59m59s")
      assert.spy(env.actions.remind).was_not.called()
      assert.matches("event Done", run:pending(), 1, true)
      env:advance(1)
      assert.spy(env.actions.remind).was.called(1)
    end)

    it("gives each env its own clock", function()
      env = wt.env { workflows = FIXTURES }
      local other = wt.env { workflows = FIXTURES }
      env:advance("1d")
      assert.are.equal(86400, env:now() - other:now())
      other:close()
    end)

    it("refuses a bad duration with the host's message", function()
      env = wt.env { workflows = FIXTURES }
      local ok, err = pcall(env.advance, env, "3 fortnights")
      assert.is_false(ok)
      assert.matches('invalid duration "3 fortnights": use a number of seconds or a string like', err, 1, true)
    end)
  end)

  describe("mocked actions", function()
    it("are spies that record params and idempotency keys, for any action name", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = function(p) return { id = "p-" .. p.amount } end } }
      local run = env:start("pay", { amount = 7 }, "pay-1")
      assert.are.same({ paid = true, payment = "p-7", shipped = false }, run:output())
      assert.spy(env.actions.charge).was.called_with({ amount = 7 }, match._)
      assert.are.equal("pay-1:1", env.actions.charge:key(1))
      assert.spy(env.actions.ship).was.called(1) -- not given: mocked, returns {}
    end)

    it("inject transient and permanent failures, and timeouts", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = function() return { id = "ok" } end } }
      env.actions.charge:fail_next(1, "transient")
      local run = env:start("pay", { amount = 1 })
      assert.are.equal("waiting", run:status()) -- backing off (the default policy: 3 attempts)
      assert.matches("retry of action charge (attempt 2)", run:pending(), 1, true)
      env:advance("1s")
      assert.are.same({ paid = true, payment = "ok", shipped = false }, run:output())
      env.actions.charge:fail_next(1, "permanent") -- not retried
      local run2 = env:start("pay", { amount = 2 })
      assert.are.same({ paid = false, code = "permanent", type = "permanent", attempts = 1 }, run2:output())
      env.actions.charge:time_out_next(3) -- each attempt times out after 10s of virtual time
      local run3 = env:start("pay", { amount = 3 })
      assert.are.equal("running", run3:status())
      env:advance("1m")
      assert.are.same({ paid = false, code = "retries_exhausted", type = "timeout", attempts = 3 }, run3:output())
      assert.spy(env.actions.charge).was.called(2 + 1 + 3)
    end)

    it("hold calls and complete them later, oldest first", function()
      env = wt.env { workflows = FIXTURES }
      env.actions.charge:hold()
      local a = env:start("pay", { amount = 1 })
      local b = env:start("pay", { amount = 2 })
      assert.are.equal(2, env.actions.charge:held())
      assert.are.equal("running", a:status())
      env.actions.charge:release()
      env.actions.charge:fail({ code = "declined", message = "no", retryable = false }) -- a's call
      env.actions.charge:complete({ id = "pb" })                                         -- b's call
      assert.are.same({ paid = false, code = "declined", type = "declined", attempts = 1 }, a:output())
      assert.are.same({ paid = true, payment = "pb", shipped = false }, b:output())
    end)

    it("mix with real C actions from a plugin", function()
      -- The plugin from the build whose Lua module runs this spec.
      local so = assert(package.searchpath("wfhost", package.cpath)):gsub("lua/wfhost%.so$", "demo_actions.so")
      env = wt.env { workflows = "workflows", plugins = { so } }
      local run = env:start("invoice_approval", { id = "INV-9", amount = 5 })
      run:signal("Submit", { user = "u" })
      run:signal("Approve", { user = "boss" })
      assert.are.equal("completed", run:status())
      assert.spy(env.actions.notify).was_not.called() -- the plugin's notify ran instead
    end)

    it("replace a built-in action the spec names", function()
      local dir = os.tmpname() .. ".d"
      write(dir, "e.lua", [[return workflow.define { name = "e", run = function(ctx) return ctx.actions.echo { v = 1 } end }]])
      env = wt.env { workflows = dir }
      assert.are.same({ v = 1 }, env:start("e"):output()) -- the host's echo
      env:close()
      env = wt.env { workflows = dir, actions = { echo = function() return { mocked = true } end } }
      assert.are.same({ mocked = true }, env:start("e"):output())
      assert.spy(env.actions.echo).was.called(1)
      os.execute("rm -rf " .. dir)
    end)

    it("refuse an invalid policy with the host's message", function()
      local ok, err = pcall(wt.env, { workflows = FIXTURES,
        actions = { charge = { policy = { retry = { multiplier = 0.5 } } } } })
      assert.is_false(ok)
      assert.matches("action 'charge': invalid policy: retry.multiplier must be a number >= 1, got 0.5", err, 1, true)
      ok, err = pcall(wt.env, { workflows = FIXTURES,
        actions = { charge = { policy = { retry = { max_atempts = 2 } } } } })
      assert.is_false(ok)
      assert.matches('retry: unknown option "max_atempts"', err, 1, true)
      ok, err = pcall(wt.env, { workflows = FIXTURES,
        actions = { charge = { policy = { retry = { max_attempts = 0 } } } } })
      assert.matches("max_attempts = 0 (unlimited) needs a retry.total_timeout", err, 1, true)
      ok, err = pcall(wt.env, { workflows = FIXTURES,
        actions = { charge = { policy = { breaker = { sampling_duration = "15s" } } } } })
      assert.matches("breaker.sampling_duration (15000 ms) must be at least twice the attempt timeout (10000 ms)", err, 1, true)
    end)
  end)

  describe("action policies", function()
    -- The delays between attempts, read from the history the host wrote.
    local function delays(run)
      local out = {}
      for _, e in ipairs(run:history()) do
        if e.kind == "retry_scheduled" then out[#out + 1] = e.data.delay_ms end
      end
      return out
    end
    local function kinds(run, wanted)
      local out = {}
      for _, e in ipairs(run:history()) do
        if not wanted or wanted[e.kind] then out[#out + 1] = e.kind end
      end
      return out
    end
    local no_jitter = { max_attempts = 10, initial_delay = "1s", multiplier = 2, max_delay = "100s", jitter = "none" }

    it("retries with exact exponential delays, capped, on virtual time", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = { fn = function() return { id = "c" } end,
        policy = { retry = no_jitter } } } }
      env.actions.charge:fail_next(9, "transient")
      local run = env:start("pay", { amount = 1 })
      env:advance("10m")
      assert.are.same({ 1000, 2000, 4000, 8000, 16000, 32000, 64000, 100000, 100000 }, delays(run))
      assert.are.equal("completed", run:status())
      assert.are.equal(10, env.actions.charge:attempt(10))
      -- Every attempt had the same idempotency key.
      assert.are.equal(env.actions.charge:key(1), env.actions.charge:key(10))
    end)

    it("gives up after max_attempts with a structured error", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = { policy = { retry = { max_attempts = 3,
        backoff = "constant", initial_delay = "5s", jitter = "none" } } } } }
      env.actions.charge:fail_next(5, { type = "unavailable", message = "try later", retryable = true })
      local run = env:start("pay", { amount = 1 })
      env:advance("9s")
      assert.spy(env.actions.charge).was.called(2) -- at 0s and 5s; the third is due at 10s
      env:advance("1s")
      assert.are.same({ paid = false, code = "retries_exhausted", type = "unavailable", attempts = 3 }, run:output())
      assert.are.same({ 5000, 5000 }, delays(run))
      local err
      for _, e in ipairs(run:history()) do if e.kind == "action_error" then err = e.data end end
      assert.are.equal("3 attempts failed; last error: try later", err.message)
      assert.are.same({ attempt = 3, class = "transient", type = "unavailable", message = "try later" }, err.cause)
    end)

    it("does not retry permanent errors nor non_retryable types", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = { policy = { retry = { non_retryable = { "declined" } } } } } }
      env.actions.charge:fail_next(1, { type = "declined", message = "card declined", retryable = true })
      local run = env:start("pay", { amount = 1 })
      assert.are.same({ paid = false, code = "declined", type = "declined", attempts = 1 }, run:output())
      assert.spy(env.actions.charge).was.called(1)
    end)

    it("uses a retry-after hint instead of the backoff", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = { policy = { retry = no_jitter } } } }
      env.actions.charge:fail_next(1, { type = "http_429", message = "slow down", retry_after = "7s" })
      local run = env:start("pay", { amount = 1 })
      env:advance("6s")
      assert.spy(env.actions.charge).was.called(1)
      env:advance("1s")
      assert.spy(env.actions.charge).was.called(2)
      assert.are.same({ 7000 }, delays(run))
    end)

    it("fails at once when the next attempt would start after the total timeout", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = { policy = { retry = { max_attempts = 0,
        total_timeout = "10s", initial_delay = "4s", backoff = "constant", jitter = "none" } } } } }
      env.actions.charge:fail_next(100, "transient")
      local run = env:start("pay", { amount = 1 })
      env:advance("1m")
      -- attempts at 0, 4s, 8s; the next would start at 12s > 10s
      assert.are.same({ paid = false, code = "deadline_exceeded", type = "transient", attempts = 3 }, run:output())
    end)

    it("takes per-call options from the workflow over the action's policy", function()
      env = wt.env { workflows = FIXTURES }
      env.actions.charge:fail_next(1, "transient")
      local run = env:start("pay", { amount = 1, opts = { retry = { initial_delay = "30s", jitter = "none" }, key = "order-9" } })
      env:advance("29s")
      assert.spy(env.actions.charge).was.called(1)
      env:advance("1s")
      assert.are.equal("completed", run:status())
      assert.are.equal("order-9", env.actions.charge:key(2))
      local bad = env:start("pay", { amount = 1, opts = { retry = { max_attempts = -1 } } })
      assert.are.equal("failed", bad:status())
      assert.matches("ctx.actions.charge(params, opts): retry.max_attempts must be a whole number >= 0, got -1", bad:error(), 1, true)
    end)

    it("suspends for an operator when asked to, and goes on after a retry", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = { fn = function() return { id = "late" } end,
        policy = { retry = { max_attempts = 2, on_exhausted = "suspend", jitter = "none" } } } } }
      env.actions.charge:fail_next(2, "transient")
      local run = env:start("pay", { amount = 1 })
      env:advance("1m")
      assert.are.equal("suspended", run:status())
      assert.matches("action 'charge' gave up: 2 attempts failed", run:error(), 1, true)
      run:retry()
      assert.are.equal("completed", run:status())
      assert.are.equal(3, env.actions.charge:attempt(3))
    end)

    it("counts an operator's new round from the retry, across a restart", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = { fn = function() return { id = "x" } end,
        policy = { retry = { max_attempts = 2, total_timeout = "30s", initial_delay = "5s", backoff = "constant",
          jitter = "none", on_exhausted = "suspend" } } } } }
      env.actions.charge:fail_next(3, "transient")
      local run = env:start("pay", { amount = 1 })
      env:advance("10s") -- attempts at 0s and 5s fail: suspended
      assert.are.equal("suspended", run:status())
      env:advance("25s") -- +35s: past the first round's total timeout
      run:retry()        -- attempt 3 fails at once; attempt 4 is due at +40s, in the new round's 30s
      env:restart()
      env:advance("5s")
      assert.are.equal("completed", run:status())
      assert.are.equal(4, env.actions.charge:attempt(4))
    end)

    it("opens the breaker, rejects without invoking, and closes after a good probe", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = { fn = function() return { id = "ok" } end, policy = {
        retry = { max_attempts = 1 }, breaker = { min_throughput = 4, failure_ratio = 0.5, break_duration = "5s" } } } } }
      env.actions.charge:fail_next(4, "transient")
      for i = 1, 4 do env:start("pay", { amount = i }) end
      assert.are.equal("open", env:breaker("charge"))
      -- Rejected inside the retry: rescheduled to when the breaker half-opens, no attempt used.
      local run = env:start("pay", { amount = 5 })
      assert.spy(env.actions.charge).was.called(4)
      assert.are.same({ "rejected", "retry_scheduled" }, kinds(run, { rejected = true, retry_scheduled = true }))
      env:advance("6s") -- the probe succeeds and closes the breaker
      assert.are.equal("completed", run:status())
      assert.are.equal("closed", env:breaker("charge"))
      assert.spy(env.actions.charge).was.called(5)
      local changes = {}
      for _, e in ipairs(run:history()) do
        if e.kind == "breaker" then changes[#changes + 1] = e.data.from .. ">" .. e.data.to end
      end
      assert.are.same({ "open>half_open", "half_open>closed" }, changes)
      local stats = env:action_stats()
      assert.are.equal(1, stats.rejections)
      assert.are.equal(1, stats.breaker_opened)
    end)

    it("re-opens when the probe fails", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = { policy = {
        retry = { max_attempts = 1 }, breaker = { min_throughput = 2, break_duration = "5s" } } } } }
      env.actions.charge:fail_next(3, "transient")
      env:start("pay", { amount = 1 })
      env:start("pay", { amount = 2 })
      assert.are.equal("open", env:breaker("charge"))
      env:advance("5s")
      local probe = env:start("pay", { amount = 3 }) -- the half-open probe, which fails
      assert.are.equal("retries_exhausted", probe:output().code)
      assert.spy(env.actions.charge).was.called(3)
      assert.are.equal("open", env:breaker("charge"))
      local rejected = env:start("pay", { amount = 4 })
      assert.spy(env.actions.charge).was.called(3) -- open again: not invoked
      assert.are.equal("waiting", rejected:status())
    end)

    it("counts a permanent error as a success for the breaker", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = { policy = {
        retry = { max_attempts = 1 }, breaker = { min_throughput = 2 } } } } }
      env.actions.charge:fail_next(5, "permanent")
      for i = 1, 5 do env:start("pay", { amount = i }) end
      assert.are.equal("closed", env:breaker("charge"))
    end)

    it("keeps one breaker per key when asked to", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = { policy = {
        retry = { max_attempts = 1 }, breaker = { min_throughput = 2, key = "currency" } } } } }
      env.actions.charge:fail_next(2, "transient")
      env:start("pay", { amount = 1, currency = "EUR" })
      env:start("pay", { amount = 2, currency = "EUR" })
      assert.are.equal("open", env:breaker("charge", "EUR"))
      local usd = env:start("pay", { amount = 3, currency = "USD" })
      assert.are.equal("completed", usd:status())
    end)

    it("isolates and closes a breaker by hand", function()
      env = wt.env { workflows = FIXTURES }
      env:isolate("charge")
      local run = env:start("pay", { amount = 1 })
      env:advance("1m")
      assert.spy(env.actions.charge).was_not.called()
      assert.are.equal("isolated", env:breaker("charge"))
      env:close_breaker("charge")
      env:advance("10s")
      assert.are.equal("completed", run:status())
    end)

    it("keeps a backoff across a restart: the attempt runs once, at its persisted time", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = { policy = { retry = no_jitter } } } }
      env.actions.charge:fail_next(3, "transient")
      local run = env:start("pay", { amount = 1 })
      env:advance("1500ms") -- attempt 2 at 1s failed; attempt 3 is due at 3s
      env:restart()
      env:advance("1499ms")
      assert.spy(env.actions.charge).was.called(2)
      env:advance("1ms")
      assert.spy(env.actions.charge).was.called(3)
      env:restart()
      env:advance("1m")
      assert.spy(env.actions.charge).was.called(4)
      assert.are.equal("completed", run:status())
      assert.are.same({ 1000, 2000, 4000 }, delays(run))
    end)
  end)

  describe("restart", function()
    local function run_pay(restart_every_step)
      local e = wt.env { workflows = FIXTURES, actions = { charge = function() return { id = "x" } end } }
      e.actions.charge:fail_next(1, "transient")
      local run = e:start("pay", { amount = 5 }, "p")
      if restart_every_step then e:restart() end
      e:advance("30s")
      if restart_every_step then e:restart() end
      e:advance("30s")
      if restart_every_step then e:restart() end
      local kinds = {}
      for _, h in ipairs(run:history()) do kinds[#kinds + 1] = h.kind .. ":" .. tostring(h.name) end
      local out, calls = run:output(), #e.actions.charge.calls
      e:close()
      return out, kinds, calls
    end

    it("rebuilds every instance by replay with the same outcome and history", function()
      local out1, kinds1, calls1 = run_pay(false)
      local out2, kinds2, calls2 = run_pay(true)
      assert.are.same(out1, out2)
      assert.are.same(kinds1, kinds2)
      assert.are.equal(calls1, calls2)
    end)
  end)

  describe("replay checks", function()
    local dir = os.tmpname() .. ".d"
    local v1 = [[return workflow.define { name = "flow", run = function(ctx)
      ctx.actions.a {}
      ctx:wait_for("go")
      ctx.actions.b {}
      return "done"
    end }]]

    it("pass for the code that wrote the histories", function()
      write(dir, "flow.lua", v1)
      env = wt.env { workflows = dir }
      env:start("flow", nil, "f1"):signal("go")
      env:start("flow", nil, "f2")
      assert.is_true(wt.replay_all(env))
      local diverging, n = wt.replay(env.db, dir)
      assert.are.same({}, diverging)
      assert.are.equal(2, n)
    end)

    it("report the first divergence per instance against changed code", function()
      write(dir, "flow.lua", v1)
      env = wt.env { workflows = dir }
      env:start("flow", nil, "f1"):signal("go")
      env:start("flow", nil, "f2")
      local changed = dir .. "2"
      write(changed, "flow.lua", (v1:gsub("ctx.actions.b", "ctx.actions.c")))
      local diverging = wt.replay(env.db, changed)
      assert.are.equal(1, #diverging) -- f2 has not reached step 3 yet: nothing diverges for it
      assert.are.equal("f1", diverging[1].id)
      assert.are.equal(
        "non-determinism at step 3: history has action `b`, the code now calls action `c`. Restore the previous code "
          .. "(or guard the change with a new workflow version), then run `wfhost retry f1`", diverging[1].divergence)
      os.execute("rm -rf " .. changed)
    end)

    it("fail replay_all with the divergence and the timeline", function()
      write(dir, "flow.lua", v1)
      env = wt.env { workflows = dir }
      env:start("flow", nil, "f1"):signal("go")
      write(dir, "flow.lua", (v1:gsub("ctx.actions.a {}", "ctx:sleep(1)")))
      env:restart()
      local ok, err = pcall(wt.replay_all, env)
      assert.is_false(ok)
      assert.matches("replay of f1 diverges: non-determinism at step 1: history has action `a`, the code now calls sleep", err, 1, true)
      assert.matches("action_result", err, 1, true) -- the timeline
    end)

    it("refuse a database that does not exist instead of passing on nothing", function()
      local ok, err = pcall(wt.replay, dir .. "/no-such.db", FIXTURES)
      assert.is_false(ok)
      assert.matches("no database at", err, 1, true)
      assert.is_nil(io.open(dir .. "/no-such.db"))
    end)

    teardown(function() os.execute("rm -rf " .. dir) end)
  end)
end)

-- The testing kit's own behaviour: virtual time, mocked actions and faults, restarts, and
-- replay checks.
local wt = require "workflow.testing"

local FIXTURES = "spec/fixtures/workflows"

local function write(dir, name, src)
  os.execute("mkdir -p " .. dir)
  local f = assert(io.open(dir .. "/" .. name, "w"))
  f:write(src)
  f:close()
end

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

    it("inject transient and permanent failures", function()
      env = wt.env { workflows = FIXTURES, actions = { charge = function() return { id = "ok" } end } }
      env.actions.charge:fail_next(1, "transient")
      local run = env:start("pay", { amount = 1 })
      assert.are.equal("waiting", run:status()) -- backing off for a minute
      env:advance("1m")
      assert.are.same({ paid = true, payment = "ok", shipped = false }, run:output())
      env.actions.charge:fail_next(1, "permanent")
      local run2 = env:start("pay", { amount = 2 })
      assert.are.same({ paid = false, code = "permanent" }, run2:output())
      env.actions.charge:time_out_next(2)
      local run3 = env:start("pay", { amount = 3 })
      env:advance("1m")
      assert.are.same({ paid = false, code = "timeout" }, run3:output())
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
      assert.are.same({ paid = false, code = "declined" }, a:output())
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

    it("refuse policies until the host has them", function()
      local ok, err = pcall(wt.env, { workflows = FIXTURES,
        actions = { charge = { fn = function() end, policy = { retry = {} } } } })
      assert.is_false(ok)
      assert.matches("action 'charge': policies (retry, timeout, breaker) are not supported", err, 1, true)
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

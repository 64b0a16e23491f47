-- Workflow patterns: parallel branches (ctx:all, ctx:any), cancellation and ctx:shield,
-- sagas (ctx:compensate), ctx:complete. Each scenario also runs with the host restarted after
-- every step (wt.check_restarts) and must end the same way.
local wt = require "workflow.testing"

local FIX = "spec/fixtures/patterns"

local function kinds(run, kind)
  local out = {}
  for _, e in ipairs(run:history()) do
    if e.kind == kind then out[#out + 1] = e end
  end
  return out
end

-- Runs scenario on a plain env and on one restarted after every step; returns the plain run's
-- outcome by instance id.
local function both(opts, scenario)
  opts.workflows = opts.workflows or FIX
  return wt.check_restarts(opts, scenario)
end

describe("patterns #patterns", function()
  local env
  after_each(function() if env then env:close() end env = nil end)

  describe("ctx:all", function()
    local prices = { actions = { price = function(p) return { price = #p.sku * 10 } end } }

    it("returns the branches' results in branch order, whatever order they end in", function()
      local out = both(prices, function(e)
        e:start("fanout", { items = { { sku = "a", delay = 30 }, { sku = "bb", delay = 10 }, { sku = "ccc" } } }, "f1")
        e:advance("1m")
        assert.are.equal("completed", e:run("f1"):status())
      end)
      assert.are.same({ prices = { 10, 20, 30 }, empty = 0 }, out.f1.output)
    end)

    it("runs the branches concurrently: three actions in flight at once", function()
      env = wt.env { workflows = FIX }
      env.actions.price:hold()
      local run = env:start("fanout", { items = { { sku = "a" }, { sku = "b" }, { sku = "c" } } }, "f2")
      assert.are.equal(3, env.actions.price:held())
      assert.matches("action price; action price; action price", run:pending(), 1, true)
      env.actions.price:complete { price = 3 }
      env.actions.price:complete { price = 1 }
      env.actions.price:complete { price = 2 }
      env:settle()
      assert.are.same({ 3, 1, 2 }, run:output().prices)
    end)

    it("is fail-fast: the first error cancels the other branches, which may clean up, then is raised", function()
      local opts = { actions = { flaky = { fn = function() error { type = "declined", message = "no", retryable = false } end } } }
      local out = both(opts, function(e)
        e:start("fail_fast", nil, "ff")
        e:advance("10s")
        assert.are.equal("completed", e:run("ff"):status())
      end)
      assert.are.same({ caught = "declined", action = "flaky", waiter = "cancelled" }, out.ff.output)
      env = wt.env { workflows = FIX, actions = opts.actions }
      local run = env:start("fail_fast", nil, "ff")
      env:advance("10s")
      assert.spy(env.actions.cleanup).was.called(1)
      assert.are.equal(1, #kinds(run, "withdrawn")) -- the wait for "never"
    end)

    it("interleaves after restarts exactly as it did, whatever order outcomes arrive in", function()
      local out = both({}, function(e)
        e:start("interleave", nil, "il")
        e:advance("1m")
        assert.are.equal("completed", e:run("il"):status())
      end)
      assert.are.same({ a = "a", b = "b", order = "b1,a1,a2,b2,b3,a3" }, out.il.output)
    end)
  end)

  describe("ctx:any", function()
    it("takes the first of an event, a timer and an action, and cancels the others", function()
      local out = both({}, function(e)
        e.actions.slow:hold()
        e:start("race", { mode = "first" }, "r1")
        e:run("r1"):signal("Go", { by = "ann" })
        assert.are.equal("completed", e:run("r1"):status())
      end)
      assert.are.same({ winner = 1, value = { by = "ann" } }, out.r1.output)
      env = wt.env { workflows = FIX }
      env.actions.slow:hold()
      local run = env:start("race", { mode = "first", then_wait = true }, "r1")
      run:signal("Go", {})
      assert.are.equal(2, #kinds(run, "withdrawn")) -- the timer and the action
      -- The action's answer after its branch was cancelled is recorded as ignored.
      env.actions.slow:complete { answer = 42 }
      env:settle()
      assert.are.equal(1, #kinds(run, "ignored"))
      run:signal("Done")
      assert.are.same({ winner = 1, value = {} }, run:output())
    end)

    it("lets the timer win when nothing else comes", function()
      env = wt.env { workflows = FIX }
      env.actions.slow:hold()
      local run = env:start("race", { mode = "first" })
      env:advance("1h")
      assert.are.same({ winner = 2, value = "timer" }, run:output())
    end)

    it("waits for n branches and returns them in the order they finished", function()
      local out = both({}, function(e)
        local run = e:start("race", { mode = "two" }, "r2")
        run:signal("C")
        run:signal("A")
        assert.are.equal("completed", run:status())
      end)
      assert.are.same({ first = "C", second = "A", count = 2 }, out.r2.output)
    end)

    it("with cancel = false lets the others run on, their results discarded", function()
      local out = both({}, function(e)
        local run = e:start("race", { mode = "background" }, "r3")
        run:signal("Fast")
        e:advance("20s")
        run:signal("Done")
        assert.are.equal("completed", run:status())
      end)
      assert.are.same({ winner = 1, done = "Done" }, out.r3.output)
      env = wt.env { workflows = FIX }
      local run = env:start("race", { mode = "background" })
      run:signal("Fast")
      env:advance("20s")
      assert.spy(env.actions.late).was.called(1) -- ran on after the race was decided
    end)

    it("raises when n can no longer be reached", function()
      local opts = { actions = { bad = { fn = function() error { type = "bad", message = "no", retryable = false } end } } }
      local out = both(opts, function(e)
        e:start("race", { mode = "unreachable" }, "r4")
        e:advance("5s")
        assert.are.equal("completed", e:run("r4"):status())
      end)
      assert.are.same({ code = "any_failed", failed = 2 }, out.r4.output)
    end)
  end)

  describe("cancellation and ctx:shield", function()
    it("raises the cancellation where the instance waits; shielded cleanup runs to its end", function()
      both({}, function(e)
        local run = e:start("shielded", nil, "s1")
        run:cancel()
        e:settle()
        assert.are.equal("waiting", run:status()) -- sleeping in its cleanup
        run:cancel() -- a second cancellation, during the shielded cleanup: raised after it
        e:settle()
        assert.are.equal("waiting", run:status())
        e:advance("2m")
        assert.spy(e.actions.audit).was.called() -- the cleanup ran to its end first
        assert.are.equal("cancelled", run:status())
      end)
    end)
  end)

  describe("sagas", function()
    local function booking(fail)
      return { workflows = "workflows", actions = {
        book_flight = function() return { booking = "F1" } end,
        book_hotel = function() return { booking = "H1" } end,
        book_car = function()
          if fail then error { type = "sold_out", message = "no cars", retryable = false } end
          return { booking = "C1" }
        end,
      } }
    end

    it("completes without compensating when every step succeeds", function()
      local out = both(booking(false), function(e)
        e:start("trip_booking", { id = "T1", flight = "LH1", hotel = "Ritz", car = "Mini" }, "t1")
        assert.are.equal("completed", e:run("t1"):status())
      end)
      assert.are.same({ flight = "F1", hotel = "H1", car = "C1" }, out.t1.output)
    end)

    it("undoes the bookings made, in reverse order, when one fails; the instance ends failed", function()
      local out = both(booking(true), function(e)
        e:start("trip_booking", { id = "T2", flight = "LH1", hotel = "Ritz", car = "Mini" }, "t2")
        assert.are.equal("failed", e:run("t2"):status())
      end)
      assert.matches("sold_out: no cars", out.t2.error, 1, true)
      env = wt.env { workflows = "workflows", actions = booking(true).actions }
      local run = env:start("trip_booking", { id = "T2", flight = "LH1", hotel = "Ritz", car = "Mini" })
      assert.spy(env.actions.cancel_hotel).was.called_with({ trip = "T2", booking = "H1" }, match._)
      assert.spy(env.actions.cancel_flight).was.called(1)
      assert.spy(env.actions.cancel_car).was.not_called()
      local comp = kinds(run, "compensation")
      assert.are.same({ "begin", "done", "done", "end" }, { comp[1].name, comp[2].name, comp[3].name, comp[4].name })
      assert.is_nil(comp[2].data.error)
      assert.matches("trip_booking.lua:%d+", run:error())
    end)

    it("compensates when cancelled, and a crash during compensation repeats no finished one", function()
      local opts = booking(false)
      both(opts, function(e)
        e.actions.book_car:hold()
        local run = e:start("trip_booking", { id = "T3", flight = "LH1", hotel = "Ritz", car = "Mini" }, "t3")
        run:cancel()
        e:settle()
        assert.are.equal("cancelled", run:status())
      end)
      env = wt.env { workflows = "workflows", actions = opts.actions }
      env.actions.book_car:hold()
      env.actions.cancel_hotel:hold()
      local run = env:start("trip_booking", { id = "T3", flight = "LH1", hotel = "Ritz", car = "Mini" })
      run:cancel()
      env:settle()
      assert.are.equal("running", run:status()) -- compensating: cancel_hotel is in flight
      env.actions.cancel_hotel:release()
      env:restart() -- a crash: cancel_hotel is invoked again, cancel_flight not
      env:settle()
      assert.are.equal("cancelled", run:status())
      assert.spy(env.actions.cancel_flight).was.called(1)
      assert.are.equal(1, #kinds(run, "withdrawn")) -- book_car
    end)
  end)

  describe("ctx:complete", function()
    it("ends the instance at once with its value, cancelling the other branches, compensating nothing", function()
      local out = both({}, function(e)
        local run = e:start("early", nil, "e1")
        run:signal("Stop", { user = "bo" })
        assert.are.equal("completed", run:status())
      end)
      assert.are.same({ stopped_by = "bo" }, out.e1.output)
      env = wt.env { workflows = FIX }
      local run = env:start("early")
      run:signal("Stop", { user = "bo" })
      assert.spy(env.actions.undo).was.not_called()
    end)
  end)

  it("replays every pattern's history against the code without divergence", function()
    env = wt.env { workflows = FIX }
    env.actions.slow:hold()
    env:start("race", { mode = "first" }):signal("Go", {})
    env:start("interleave")
    env:advance("1m")
    assert.is_true(wt.replay_all(env))
  end)
end)

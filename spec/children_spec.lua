-- Child workflows (ctx:child, ctx:start_child and its handle) and ctx:continue_as_new. Each
-- scenario also runs with the host restarted after every step (wt.check_restarts).
local wt = require "workflow.testing"

local FIX = "spec/fixtures/children"
local double = { double = function(p) return { value = p.n * 2 } end }

local function kinds(run, kind)
  local n = 0
  for _, e in ipairs(run:history()) do
    if e.kind == kind then n = n + 1 end
  end
  return n
end

describe("child workflows #children", function()
  local env
  after_each(function() if env then env:close() end env = nil end)

  it("ctx:child starts a child with a deterministic id and returns its output", function()
    local out = wt.check_restarts({ workflows = FIX, actions = double }, function(e)
      e:start("parent", { mode = "one", n = 21 }, "p1")
      assert.are.equal("completed", e:run("p1"):status())
    end)
    assert.are.same({ doubled = 42 }, out.p1.output)
    assert.are.equal("completed", out["p1/1"].status)
    env = wt.env { workflows = FIX, actions = double }
    env:start("parent", { mode = "one", n = 1 }, "p1")
    local child = env:instances()[1].id == "p1" and env:instances()[2] or env:instances()[1]
    assert.are.equal("p1/1", child.id)
    assert.are.equal("p1", child.parent)
    assert.spy(env.actions.double).was.called(1)
  end)

  it("fans out to children and joins their results, each child started once", function()
    local out = wt.check_restarts({ workflows = FIX, actions = double }, function(e)
      e:start("parent", { mode = "fanout", count = 4 }, "fan")
      assert.are.equal("completed", e:run("fan"):status())
    end)
    assert.are.same({ sum = 20, ids = { "fan/1", "fan/2", "fan/3", "fan/4" } }, out.fan.output)
    env = wt.env { workflows = FIX, actions = double, restart_every_step = true }
    env:start("parent", { mode = "fanout", count = 4 }, "fan")
    assert.spy(env.actions.double).was.called(4)
    assert.are.equal(5, #env:instances())
  end)

  it("raises child_failed with the child's error", function()
    local out = wt.check_restarts({ workflows = FIX }, function(e)
      e:start("parent", { mode = "fails" }, "pf")
      assert.are.equal("completed", e:run("pf"):status())
    end)
    local o = out.pf.output
    assert.are.equal(false, o.ok)
    assert.are.equal("child_failed", o.code)
    assert.are.equal("pf/1", o.child)
    assert.matches("child workflow 'worker' (pf/1) failed: ", o.message, 1, true)
    assert.matches("no such item", o.message, 1, true)
    assert.are.equal("failed", out["pf/1"].status)
  end)

  it("signals a child through its handle", function()
    local out = wt.check_restarts({ workflows = FIX }, function(e)
      e:start("parent", { mode = "signal", id = "kid-1" }, "ps")
      assert.are.equal("completed", e:run("ps"):status())
    end)
    assert.are.same({ sent = true, got = { by = "parent" } }, out.ps.output)
  end)

  it("cancels a child through its handle: result() raises child_cancelled", function()
    local out = wt.check_restarts({ workflows = FIX }, function(e)
      e:start("parent", { mode = "cancel" }, "pc")
      e:advance("2s")
      assert.are.equal("completed", e:run("pc"):status())
    end)
    assert.are.same({ asked = true, ok = false, code = "child_cancelled" }, out.pc.output)
    assert.are.equal("cancelled", out["pc/1"].status)
  end)

  it("cancels the losing child of a race and ignores nothing it never sent", function()
    local out = wt.check_restarts({ workflows = FIX }, function(e)
      e:start("parent", { mode = "race" }, "pr")
      e:advance("6s")
      assert.are.equal("cancelled", e:run("pr/1"):status())
      e:run("pr"):signal("Done")
      assert.are.equal("completed", e:run("pr"):status())
    end)
    assert.are.same({ winner = 2 }, out.pr.output)
    env = wt.env { workflows = FIX }
    local run = env:start("parent", { mode = "race" }, "pr")
    env:advance("6s")
    env:run("pr"):signal("Done")
    assert.are.equal(1, kinds(run, "withdrawn"))
    assert.are.equal(0, kinds(run, "child_ended")) -- the cancelled child no longer reports
  end)

  it("cancelling a parent cancels its attached children", function()
    local out = wt.check_restarts({ workflows = FIX }, function(e)
      e:start("parent", { mode = "wait" }, "pw")
      e:run("pw"):cancel()
      assert.are.equal("cancelled", e:run("pw"):status())
    end)
    assert.are.equal("cancelled", out["pw/1"].status)
  end)

  it("a parent that ends cancels its attached children; a detached one runs on", function()
    local out = wt.check_restarts({ workflows = FIX }, function(e)
      e:start("parent", { mode = "attached" }, "pa")
      e:start("parent", { mode = "detached", id = "free" }, "pd")
      assert.are.equal("completed", e:run("pd"):status())
      e:run("free"):signal("Go", { alone = true })
    end)
    assert.are.equal("cancelled", out["pa/1"].status)
    assert.are.equal("completed", out.free.status)
    assert.are.same({ alone = true }, out.free.output)
  end)

  it("lets two threads wait on one handle", function()
    local out = wt.check_restarts({ workflows = FIX, actions = double }, function(e)
      e:start("parent", { mode = "two_waiters" }, "tw")
      assert.are.equal("completed", e:run("tw"):status())
    end)
    assert.are.same({ a = 10, b = 10 }, out.tw.output)
  end)

  it("matches a child's outcome by its exact id, even one with a '|'", function()
    local out = wt.check_restarts({ workflows = FIX }, function(e)
      e:start("parent", { mode = "pipe_id" }, "pp")
      e:run("pp"):signal("Go", { from = "person" })
      assert.are.equal("completed", e:run("pp"):status())
    end)
    assert.are.same({ own = { from = "person" }, child = { from = "parent" } }, out.pp.output)
  end)

  it("raises start_child's errors at the workflow's line, under its own name", function()
    env = wt.env { workflows = FIX }
    local run = env:start("parent", { mode = "bad_start" }, "bs")
    local err = run:output().err
    assert.matches('parent.lua:%d+: ctx:start_child%("nosuch"%): no workflow named \'nosuch\' is loaded', err)
  end)

  it("refuses a signal over max_payload", function()
    env = wt.env { workflows = FIX, max_payload = 2000 }
    local run = env:start("parent", { mode = "big_signal", size = 3000 }, "bg")
    assert.are.equal(false, run:output().ok)
    assert.matches("handle:signal(event, data): the data is 3011 bytes; the limit is 2000 (config max_payload)",
      run:output().err, 1, true)
  end)

  it("refuses a child id that exists with a clear error", function()
    env = wt.env { workflows = FIX }
    env:start("waiter", nil, "taken")
    local run = env:start("parent", { mode = "signal", id = "taken" }, "px")
    assert.are.equal("failed", run:status())
    assert.matches("an instance with the id 'taken' exists already: give the child another id with opts.id",
      run:error(), 1, true)
    assert.are.equal("waiting", env:run("taken"):status()) -- the instance that had the id is untouched
  end)
end)

describe("ctx:continue_as_new #children", function()
  local env
  after_each(function() if env then env:close() end env = nil end)

  it("starts the next run with a fresh history under the same id, and events are not lost", function()
    local out = wt.check_restarts({ workflows = FIX }, function(e)
      e:start("looper", { per_run = 3, stop = 10 }, "loop")
      for _ = 1, 10 do e:run("loop"):signal("Tick", { n = 1 }) end
      assert.are.equal("completed", e:run("loop"):status())
    end)
    assert.are.same({ total = 10 }, out.loop.output)
    env = wt.env { workflows = FIX }
    local run = env:start("looper", { per_run = 3, stop = 100 }, "loop")
    for _ = 1, 7 do env:run("loop"):signal("Tick", { n = 2 }) end
    local info = env:instances()[1]
    assert.are.equal(3, info.run)
    assert.are.same({ total = 12, per_run = 3, stop = 100 }, info.input)
    local h = run:history()
    assert.are.equal("started", h[1].kind)
    assert.are.equal(1, kinds(run, "event")) -- only this run's: the seventh tick
  end)

  it("ends the run from a ctx:any branch at once; a later run's keys carry its number", function()
    local out = wt.check_restarts({ workflows = FIX }, function(e)
      e:start("looper", { race = 2 }, "lr")
      e:advance("1s")
      e:advance("1s")
      assert.are.equal("completed", e:run("lr"):status())
    end)
    assert.are.same({ total = 2, child = "lr/1@3" }, out.lr.output)
    assert.are.equal("cancelled", out["lr/1@3"].status)
  end)
end)

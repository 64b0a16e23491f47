-- Changing the code of running workflows: versions side by side, ctx:patched rolled out to
-- instances in flight, progress, and the history size limit. Every scenario runs twice: as
-- is, and with a restart (a new host rebuilding every instance by replay) after every step.
local wt = require "workflow.testing"

local write = require("support").write

-- order, before the change: charge, wait for Shipped, email, wait for Delivered.
local ORDER_V1 = [[
return workflow.define { name = "order", version = 1, run = function(ctx, input)
  ctx.actions.charge { amount = input.amount }
  ctx:wait_for("Shipped")
  ctx.actions.email { template = "shipped" }
  ctx:wait_for("Delivered")
  return "delivered by v1"
end }
]]

-- The same version with a change: an SMS instead of the email, for instances that reach the
-- step on this code.
local ORDER_V1_PATCHED = [[
return workflow.define { name = "order", version = 1, run = function(ctx, input)
  ctx.actions.charge { amount = input.amount }
  ctx:wait_for("Shipped")
  if ctx:patched("sms-on-ship") then
    ctx.actions.sms { text = "shipped" }
  else
    ctx.actions.email { template = "shipped" }
  end
  ctx:wait_for("Delivered")
  return ctx:patched("sms-on-ship") and "delivered, told by sms" or "delivered, told by email"
end }
]]

-- A new version with other steps altogether.
local ORDER_V2 = [[
local common = require "lib.common"
return workflow.define { name = "order", version = 2, run = function(ctx, input)
  ctx.actions.reserve { amount = input.amount }
  ctx:wait_for("Delivered")
  return common.label(ctx.version)
end }
]]

for _, restarts in ipairs { false, true } do
  local mode = restarts and " (with a restart after every step)" or ""

  describe("versioning running workflows" .. mode .. " #integration", function()
    local env, dir
    -- After each step of a scenario: a new host, which rebuilds every instance by replay.
    local function step()
      if restarts then env:restart() end
    end

    before_each(function()
      dir = os.tmpname() .. ".wf"
      write(dir .. "/lib", "common.lua", 'return { label = function(v) return "delivered by v" .. v end }\n')
    end)
    after_each(function()
      if env then env:close() end
      env = nil
      os.execute("rm -rf " .. dir)
    end)

    it("rolls a change out with ctx:patched: instances past it keep the old path, the others take the new one", function()
      write(dir, "order.lua", ORDER_V1)
      env = wt.env { workflows = dir }
      local old = env:start("order", { amount = 10 }, "o-old")
      local mid = env:start("order", { amount = 20 }, "o-mid")
      step()
      assert.is_true(old:signal("Shipped"))
      step()
      assert.spy(env.actions.email).was.called(1)

      -- Deploy the change (a new host loads it).
      write(dir, "order.lua", ORDER_V1_PATCHED)
      env:restart()
      assert.is_true(wt.replay_all(env)) -- the change replays every history written before it
      local new = env:start("order", { amount = 30 }, "o-new")
      step()
      for _, r in ipairs { old, mid, new } do
        if r ~= old then assert.is_true(r:signal("Shipped")) end
        step()
      end
      for _, r in ipairs { old, mid, new } do
        assert.is_true(r:signal("Delivered"))
        step()
      end

      assert.are.equal("delivered, told by email", old:output())
      assert.are.equal("delivered, told by sms", mid:output())
      assert.are.equal("delivered, told by sms", new:output())
      assert.spy(env.actions.email).was.called(1) -- o-old's, before the change, never again
      assert.spy(env.actions.sms).was.called(2)
      local function patches(r)
        local n = 0
        for _, e in ipairs(r:history()) do if e.kind == "patch" then n = n + 1 end end
        return n
      end
      assert.are.same({ 0, 1, 1 }, { patches(old), patches(mid), patches(new) })
      assert.is_true(wt.replay_all(env))
    end)

    it("runs versions side by side: new instances on the newest, running ones on theirs", function()
      write(dir, "order@1.lua", ORDER_V1)
      env = wt.env { workflows = dir }
      local first = env:start("order", { amount = 10 }, "v1-run")
      step()
      write(dir, "order@2.lua", ORDER_V2)
      env:restart()
      local second = env:start("order", { amount = 20 }, "v2-run")
      step()
      local versions = {}
      for _, w in ipairs(env:versions()) do
        versions[#versions + 1] = ("%s@%d newest=%s active=%d"):format(w.workflow, w.version, tostring(w.newest), w.active)
      end
      assert.are.same({ "order@1 newest=false active=1", "order@2 newest=true active=1" }, versions)
      assert.is_true(first:signal("Shipped"))
      step()
      assert.is_true(first:signal("Delivered"))
      assert.is_true(second:signal("Delivered"))
      step()
      assert.are.equal("delivered by v1", first:output())
      assert.are.equal("delivered by v2", second:output())
      assert.spy(env.actions.charge).was.called(1)
      assert.spy(env.actions.reserve).was.called(1)
    end)

    it("suspends an instance whose version is gone, and resumes it once the version is back", function()
      write(dir, "order@1.lua", ORDER_V1)
      env = wt.env { workflows = dir }
      local run = env:start("order", { amount = 10 }, "gone")
      os.remove(dir .. "/order@1.lua")
      write(dir, "order@2.lua", ORDER_V2)
      env:restart()
      assert.is_true(run:signal("Shipped"))
      assert.are.equal("suspended", run:status())
      assert.are.equal("workflow 'order' version 1 is not loaded on this host: load it, then run `wfhost retry gone`",
        run:error())
      step()
      write(dir, "order@1.lua", ORDER_V1)
      env:restart()
      run:retry()
      step()
      assert.is_true(run:signal("Delivered"))
      assert.are.equal("delivered by v1", run:output())
    end)

    it("keeps the progress an instance reports, through replay", function()
      write(dir, "batch.lua", [[
return workflow.define { name = "batch", run = function(ctx, input)
  for i = 1, input.n do
    ctx.actions.work { item = i }
    ctx:progress(100 * i / input.n, ("item %d of %d"):format(i, input.n))
    if i == 2 then ctx:wait_for("resume") end
  end
  return "done"
end }
]])
      env = wt.env { workflows = dir }
      local run = env:start("batch", { n = 4 })
      step()
      assert.are.same({ 50, "item 2 of 4" }, { run:progress() })
      assert.is_true(run:signal("resume"))
      step()
      assert.are.equal("done", run:output())
      assert.are.same({ 100, "item 4 of 4" }, { run:progress() })
      for _, e in ipairs(run:history()) do assert.are_not.equal("progress", e.kind) end
    end)

    it("fails an instance whose history reaches the limit, with the way out in the error", function()
      write(dir, "forever.lua", [[
return workflow.define { name = "forever", run = function(ctx)
  while true do ctx:sleep("1m") end
end }
]])
      env = wt.env { workflows = dir, history_warn = 10, history_limit = 40 }
      local run = env:start("forever", nil, "f-1")
      for _ = 1, 25 do
        env:advance("1m")
        step()
      end
      assert.are.equal("failed", run:status())
      assert.matches("history of instance f-1 reached 40 entries (config history_limit); use ctx:continue_as_new",
        run:error(), 1, true)
      local warnings = 0
      for _, e in ipairs(run:history()) do if e.kind == "history_warning" then warnings = warnings + 1 end end
      -- Once per instance per host run: a restart after every step would warn at each.
      if restarts then assert.is_true(warnings > 1) else assert.are.equal(1, warnings) end
    end)
  end)
end

-- expense_approval: a race between a decision and a deadline, with escalation.
local wt = require "workflow.testing"

local claim = { id = "X-1", manager = "mia", director = "dan", amount = 120 }

describe("expense_approval #integration", function()
  local env
  before_each(function() env = wt.env { workflows = "workflows" } end)
  after_each(function() env:close() end)

  it("pays when the manager approves in time; the deadline timer is withdrawn", function()
    local run = env:start("expense_approval", claim)
    env:advance("47h")
    run:signal("Approve", { user = "mia" })
    assert.are.same({ decision = "Approve", by = "mia" }, run:output())
    assert.spy(env.actions.pay).was.called_with({ claim = "X-1", amount = 120 }, match._)
    assert.spy(env.actions.notify).was.called(1)
  end)

  it("escalates to the director after 48 hours, who can still decide", function()
    local run = env:start("expense_approval", claim)
    env:advance("48h")
    assert.are.equal("escalated", run:state())
    assert.spy(env.actions.notify).was.called_with({ to = "dan", claim = "X-1", escalated = true }, match._)
    run:signal("Reject", { user = "dan" })
    assert.are.same({ decision = "Reject", by = "dan" }, run:output())
    assert.spy(env.actions.pay).was.not_called()
  end)

  it("rejects on its own when nobody decides within three days", function()
    local run = env:start("expense_approval", claim)
    env:advance("72h")
    assert.are.same({ decision = "Reject", by = "timeout" }, run:output())
  end)

  it("ends the same way with the host restarted after every step", function()
    wt.check_restarts({ workflows = "workflows" }, function(e)
      local run = e:start("expense_approval", claim, "x1")
      e:advance("50h")
      run:signal("Approve", { user = "dan" })
      assert.are.equal("completed", run:status())
    end)
  end)
end)

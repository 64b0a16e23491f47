-- nightly_report: a workflow with a schedule. The test kit's host fires it on virtual time,
-- like a real host on the wall clock.
local wt = require "workflow.testing"

describe("nightly_report #integration", function()
  local env
  before_each(function()
    -- 2026-01-14T12:00:00Z; Berlin is at UTC+1 in January, so 02:00 there is 01:00Z.
    env = wt.env { workflows = "workflows", now = 1768392000000 }
  end)
  after_each(function() env:close() end)

  it("publishes a report every night at 02:00 Berlin time", function()
    env:advance("13h")
    local run = env:run("nightly_report@2026-01-15T01:00:00Z")
    assert.are.equal("completed", run:status())
    assert.are.same({ day = "2026-01-15", recipients = { "ops@example.com" } }, env.actions.publish_report:params(1))
    env:advance("48h")
    assert.spy(env.actions.publish_report).was.called(3)
    assert.are.equal("completed", env:run("nightly_report@2026-01-17T01:00:00Z"):status())
  end)

  it("runs the latest missed night once after the host was down", function()
    env.h:set_now(1768899600000) -- 2026-01-20T09:00:00Z: six nights passed without a host
    env:restart()
    assert.spy(env.actions.publish_report).was.called(1)
    assert.are.equal("completed", env:run("nightly_report@2026-01-20T01:00:00Z"):status())
    local s = env:schedules()[1]
    assert.are.same({ "nightly_report", "definition", 5, 1768957200000 }, { s.id, s.origin, s.missed, s.next_at })
  end)

  it("can be started by hand for a given day", function()
    local run = env:start("nightly_report", { day = "2026-01-01" })
    assert.are.same({ day = "2026-01-01", recipients = 1, report = {} }, run:output())
  end)
end)

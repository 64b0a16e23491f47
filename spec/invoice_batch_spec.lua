-- workflows/invoice_batch.lua: a parent with one invoice_approval child per invoice.
local wt = require "workflow.testing"

describe("invoice_batch #children", function()
  local actions = { notify = function() return {} end, escalate = function() return { escalated = true } end }

  it("collects each child's decision, with a restart at every step too", function()
    local out = wt.check_restarts({ workflows = "workflows", actions = actions }, function(env)
      env:start("invoice_batch", { invoices = { { id = "A", amount = 1 }, { id = "B", amount = 2 },
        { id = "C", amount = 3, approval_window = "1h" } } }, "batch-1")
      assert.are.equal("awaiting_approval", env:run("batch-1/A"):state()) -- submitted by the batch
      env:run("batch-1/A"):signal("Approve", { user = "ann" })
      env:run("batch-1/B"):signal("Reject", { user = "bob", reason = "dup" })
      assert.are.equal("waiting", env:run("batch-1"):status())
      env:advance("1h") -- C was never decided: escalated
      assert.are.equal("completed", env:run("batch-1"):status())
    end)
    assert.are.same({ approved = 1, rejected = 1, escalated = 1, failed = 0 }, out["batch-1"].output)
  end)

  it("cancelling the batch cancels the invoices still open", function()
    local env = wt.env { workflows = "workflows", actions = actions }
    env:start("invoice_batch", { invoices = { { id = "A", amount = 1 }, { id = "B", amount = 2 } } }, "b2")
    env:run("b2/A"):signal("Approve", { user = "ann" })
    env:run("b2"):cancel()
    assert.are.equal("cancelled", env:run("b2"):status())
    assert.are.equal("completed", env:run("b2/A"):status())
    assert.are.equal("cancelled", env:run("b2/B"):status())
    env:close()
  end)
end)

local support = require "support.host"

describe("invoice_approval #integration", function()
  local host
  before_each(function()
    host = support.new {
      actions = {
        notify = function() return { sent = true } end,
        escalate = function(p) return { escalated = p.invoice } end,
      },
    }
  end)
  after_each(function() host:close() end)

  it("waits in draft until submitted, then asks the manager", function()
    local id = host:start("invoice_approval", { id = "INV-1", amount = 500 }, "inv-1")
    assert.are.equal("waiting", host:get(id).status)
    assert.are.equal("draft", host:get(id).state)
    assert.are.equal(0, #host.calls.notify)
    assert(host:signal(id, "Submit", { user = "u1" }))
    assert.are.equal("awaiting_approval", host:get(id).state)
    assert.are.equal(1, #host.calls.notify)
    assert.are.same({ to = "manager", invoice = "INV-1", amount = 500 }, host.calls.notify[1].params)
  end)

  it("completes with the manager's decision", function()
    local id = host:start("invoice_approval", { id = "INV-2", amount = 80 })
    host:signal(id, "Submit", { user = "u1" })
    host:signal(id, "Reject", { user = "boss", reason = "duplicate" })
    local inst = host:get(id)
    assert.are.equal("completed", inst.status)
    assert.are.equal("rejected", inst.state)
    assert.are.same({ decision = "Reject", by = "boss", reason = "duplicate" }, inst.output)
  end)

  it("takes a Submit that arrived before it waited", function()
    local h = host.h
    local id = assert(h:start("invoice_approval", { id = "INV-3" }))
    assert(h:signal(id, "Submit", { user = "early" }))
    assert(h:drain())
    assert.are.equal("awaiting_approval", host:get(id).state)
    assert.are.same({ submitted_by = "early" }, host:get(id).data)
  end)

  it("escalates after 72 hours without a decision", function()
    local id = host:start("invoice_approval", { id = "INV-4", amount = 900 })
    host:signal(id, "Submit", { user = "u1" })
    host:advance(72 * 3600 - 1)
    assert.are.equal("waiting", host:get(id).status)
    host:advance(1)
    local inst = host:get(id)
    assert.are.equal("completed", inst.status)
    assert.are.equal("escalated", inst.state)
    assert.are.same({ escalated = "INV-4" }, inst.output)
    assert.are.equal(1, #host.calls.escalate)
  end)

  it("resumes after a restart in the middle without notifying twice", function()
    local id = host:start("invoice_approval", { id = "INV-5" })
    host:signal(id, "Submit", { user = "u1" })
    host:restart()
    host:signal(id, "Approve", { user = "boss" })
    local inst = host:get(id)
    assert.are.equal("completed", inst.status)
    assert.are.same({ decision = "Approve", by = "boss" }, inst.output)
    assert.are.equal(1, #host.calls.notify)
  end)

  it("fails with a clear message when the notification fails", function()
    host.h:register_action("notify", function() error({ code = "smtp_down", message = "mail relay unreachable" }) end)
    local id = host:start("invoice_approval", { id = "INV-6" })
    host:signal(id, "Submit", { user = "u1" })
    local inst = host:get(id)
    assert.are.equal("failed", inst.status)
    assert.matches("action 'notify' failed: smtp_down: mail relay unreachable", inst.error, 1, true)
    assert.matches("invoice_approval.lua:18", inst.error, 1, true)
  end)

  it("rejects bad input with a message naming what it needs", function()
    local id = host:start("invoice_approval", "not a table")
    local inst = host:get(id)
    assert.are.equal("failed", inst.status)
    assert.matches("needs an input like", inst.error, 1, true)
  end)
end)

-- The outbox as a workflow author tests it: what a workflow emitted, and subscribers that
-- receive the messages once committed, with retries, dead letters and restarts.
local wt = require "workflow.testing"

local WORKFLOWS = "spec/fixtures/outbox"
local retry = { retry = { max_attempts = 3, backoff = "constant", initial_delay = "1s", jitter = "none" } }

describe("the outbox #integration", function()
  local env
  after_each(function() if env then env:close() end env = nil end)

  it("lists what a workflow emitted, in order, with stable ids", function()
    env = wt.env { workflows = WORKFLOWS }
    local run = env:start("announce", { id = "A-1" }, "o1")
    run:signal("Ship", { carrier = "ups" })
    assert.are.same({
      { topic = "order.created", payload = { order = "A-1" }, id = "o1:0:1", instance = "o1" },
      { topic = "order.shipped", payload = { order = "A-1", carrier = "ups" }, id = "o1:1:1", instance = "o1" },
    }, env:emitted())
    assert.are.equal(1, #env:emitted("order.shipped"))
    assert.are.equal("o1:1:1", run:emitted("order.shipped")[1].id)
  end)

  it("delivers to matching subscribers only, each message once", function()
    env = wt.env { workflows = WORKFLOWS, subscribers = { shipping = "order.shipped", all = "order.*" } }
    local run = env:start("announce", { id = "A-2" }, "o2")
    run:signal("Ship", { carrier = "dhl" })
    assert.spy(env.subscribers.all).was.called(2)
    assert.spy(env.subscribers.shipping).was.called(1)
    local msg = env.subscribers.shipping:message(1)
    assert.are.same({ order = "A-2", carrier = "dhl" }, msg.payload)
    assert.are.equal("o2:1:1", msg.id)
    assert.are.equal(1, msg.attempt)
    assert.are.same({}, env:outbox())
  end)

  it("retries a failed delivery on virtual time, holding later messages back", function()
    env = wt.env { workflows = WORKFLOWS, subscribers = { crm = { pattern = "order.*", policy = retry } } }
    env.subscribers.crm:fail_next(1, { type = "unavailable", message = "503" })
    local run = env:start("announce", { id = "A-3" }, "o3")
    run:signal("Ship", { carrier = "ups" })
    assert.spy(env.subscribers.crm).was.called(1) -- order.shipped waits behind order.created
    local pending = env:outbox("pending")
    assert.are.equal(2, #pending)
    assert.are.equal("o3:0:1", pending[1].id)
    assert.are.equal(1, pending[1].attempts)
    assert.are.equal("unavailable: 503", pending[1].last_error)
    env:advance("1s")
    local seen = {}
    for i, m in ipairs(env.subscribers.crm:messages()) do seen[i] = m.id .. "#" .. m.attempt end
    assert.are.same({ "o3:0:1#1", "o3:0:1#2", "o3:1:1#1" }, seen)
    assert.are.same({}, env:outbox())
  end)

  it("keeps a dead letter, which an operator's retry delivers", function()
    env = wt.env { workflows = WORKFLOWS, subscribers = { crm = { pattern = "order.created", policy = retry } } }
    env.subscribers.crm:fail_next(3)
    env:start("announce", { id = "A-4" }, "o4")
    env:advance("5s")
    assert.spy(env.subscribers.crm).was.called(3)
    local failed = env:outbox("failed")
    assert.are.equal(1, #failed)
    assert.are.equal("crm", failed[1].subscriber)
    assert.are.equal(3, failed[1].attempts)
    env:outbox_retry("o4:0:1")
    assert.spy(env.subscribers.crm).was.called(4)
    assert.are.same({}, env:outbox())
  end)

  it("holds a delivery until the spec completes it", function()
    env = wt.env { workflows = WORKFLOWS, subscribers = { slow = "order.created" } }
    env.subscribers.slow:hold()
    env:start("announce", { id = "A-5" }, "o5")
    assert.are.equal(1, env.subscribers.slow:held())
    assert.are.equal("pending", env:outbox()[1].status)
    env.subscribers.slow:complete()
    assert.are.same({}, env:outbox())
  end)

  it("never emits twice when an instance is rebuilt by replay", function()
    env = wt.env { workflows = WORKFLOWS, subscribers = { all = "*" } }
    local run = env:start("announce", { id = "A-6" }, "o6")
    env:restart()
    run:signal("Ship", { carrier = "ups" })
    assert.are.equal("completed", run:status())
    assert.are.equal(2, #env:emitted())
    assert.spy(env.subscribers.all).was.called(2)
  end)

  it("keeps messages nobody subscribes to until a subscriber appears", function()
    env = wt.env { workflows = WORKFLOWS }
    env:start("announce", { id = "A-7" }, "o7")
    local held = env:outbox()
    assert.are.equal(1, #held)
    assert.are.equal("unrouted", held[1].status)
    local audit = env:subscribe("audit", "order.*")
    assert.spy(audit).was.called(1)
    assert.are.equal("o7:0:1", audit:message(1).id)
    assert.are.same({}, env:outbox())
  end)

  it("raises a clear error for a bad topic, at the workflow's line", function()
    env = wt.env { workflows = WORKFLOWS }
    local run = env:start("announce", { id = "A-8", bad_topic = true }, "o8")
    run:signal("Ship", { carrier = "ups" })
    assert.are.equal("failed", run:status())
    assert.matches('announce.lua:9: ctx:emit%(topic, payload%): bad topic "order shipped"', run:error())
  end)
end)

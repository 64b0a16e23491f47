-- order_fulfillment: reserve, charge, a cooling-off window the customer may cancel in, ship.
local wt = require "workflow.testing"

local function order(over)
  local o = { id = "A-1", customer = "c-1", address = "1 Main St", cooling_off = "10m",
              items = { { sku = "tea", qty = 2, price = 4.5 }, { sku = "cup", qty = 1, price = 12 } } }
  for k, v in pairs(over or {}) do o[k] = v end
  return o
end

-- The names of the actions in an instance's history, in order.
local function actions_of(run)
  local names = {}
  for _, e in ipairs(run:history()) do
    if e.kind == "action" then names[#names + 1] = e.name end
  end
  return names
end

describe("order_fulfillment #integration", function()
  local env, stock
  before_each(function()
    stock = true
    env = wt.env {
      workflows = "workflows",
      -- release_inventory, refund_payment and notify stay the kit's mocks (returning {}).
      actions = {
        reserve_inventory = function(p)
          if not stock then return { reserved = false, missing = { p.items[1].sku } } end
          return { reserved = true, reservation = "res-" .. p.order }
        end,
        charge_payment = function(p) return { id = "pay-" .. p.order, amount = p.amount } end,
        ship = function(p) return { tracking = "TRK-" .. p.order } end,
      },
    }
  end)
  after_each(function() env:close() end)

  it("reserves, charges, waits out the cooling-off window, then ships", function()
    local run = env:start("order_fulfillment", order())
    assert.are.equal("cooling_off", run:state())
    assert.are.equal(21, env.actions.charge_payment:params(1).amount)
    assert.spy(env.actions.ship).was_not.called()
    env:advance("10m")
    assert.are.equal("completed", run:status())
    assert.are.same({ status = "shipped", total = 21, tracking = "TRK-A-1" }, run:output())
    assert.are.same({ total = 21, payment = "pay-A-1" }, run:data())
    assert.are.same({ order = "A-1", address = "1 Main St" }, env.actions.ship:params(1))
    assert.are.same({ "reserve_inventory", "charge_payment", "ship" }, actions_of(run))
  end)

  it("announces the shipment through the outbox", function()
    local feed = env:subscribe("feed", "order.*")
    local run = env:start("order_fulfillment", order())
    assert.are.same({}, env:emitted()) -- nothing decided yet
    env:advance("10m")
    assert.are.equal("completed", run:status())
    assert.are.same({ { topic = "order.shipped", id = run.id .. ":4:1", instance = run.id,
                        payload = { order = "A-1", tracking = "TRK-A-1", address = "1 Main St" } } },
                    env:emitted())
    assert.spy(feed).was.called(1)
    assert.are.equal(run.id .. ":4:1", feed:message(1).id)
  end)

  it("announces a cancellation, kept until a subscriber takes it", function()
    local run = env:start("order_fulfillment", order())
    assert(run:signal("CancelOrder"))
    assert.are.equal("cancelled_by_customer", run:state())
    local held = env:outbox()
    assert.are.equal(1, #held)
    assert.are.same({ "order.cancelled", "unrouted", 21 }, { held[1].topic, held[1].status, held[1].payload.refunded })
    local billing = env:subscribe("billing", "order.cancelled")
    assert.spy(billing).was.called(1)
    assert.are.same({}, env:outbox())
  end)

  it("does not ship before the cooling-off window is over", function()
    local run = env:start("order_fulfillment", order { cooling_off = "1h" })
    env:advance("59m59s")
    assert.are.equal("cooling_off", run:state())
    assert.spy(env.actions.ship).was_not.called()
    env:advance(1)
    assert.are.equal("shipped", run:state())
  end)

  it("applies the shared pricing rules from workflows/lib", function()
    local run = env:start("order_fulfillment", order { items = { { sku = "tv", qty = 1, price = 200 } } })
    assert.are.equal(190, run:data().total)
  end)

  it("stops when an item is out of stock", function()
    stock = false
    local run = env:start("order_fulfillment", order())
    assert.are.equal("completed", run:status())
    assert.are.same({ status = "out_of_stock", missing = { "tea" } }, run:output())
    assert.spy(env.actions.charge_payment).was_not.called()
    assert.spy(env.actions.notify).was.called(1)
    assert.are.same({ to = "c-1", template = "out_of_stock", order = "A-1" }, env.actions.notify:params(1))
  end)

  it("releases the reservation when the payment is declined", function()
    env.actions.charge_payment:fail_next(1, { code = "declined", message = "card declined", retryable = false })
    local run = env:start("order_fulfillment", order())
    assert.are.equal("payment_failed", run:state())
    assert.are.same({ status = "payment_failed", reason = "card declined" }, run:output())
    assert.are.same({ reservation = "res-A-1" }, env.actions.release_inventory:params(1))
    assert.spy(env.actions.ship).was_not.called()
  end)

  it("fails the order when shipping fails after the window", function()
    local run = env:start("order_fulfillment", order())
    env.actions.ship:fail_next(1, "permanent")
    env:advance("10m")
    assert.are.equal("failed", run:status())
    assert.are.equal("shipping", run:state())
    assert.matches("action 'ship' failed: permanent: injected permanent failure", run:error(), 1, true)
  end)

  it("refunds when the customer cancels during the cooling-off window", function()
    local run = env:start("order_fulfillment", order())
    env:advance("5m")
    assert(run:signal("CancelOrder"))
    assert.are.same({ status = "cancelled", refunded = 21 }, run:output())
    assert.spy(env.actions.refund_payment).was.called(1)
    assert.are.same({ payment = "pay-A-1", amount = 21 }, env.actions.refund_payment:params(1))
    assert.are.same({ reservation = "res-A-1" }, env.actions.release_inventory:params(1))
    assert.spy(env.actions.ship).was_not.called()
    env:advance("10m") -- the window's timer is gone with the wait
    assert.spy(env.actions.ship).was_not.called()
  end)

  it("takes a cancellation sent while the payment was being charged", function()
    env.actions.charge_payment:hold()
    local run = env:start("order_fulfillment", order())
    assert.are.equal("charging", run:state())
    assert.are.equal("action charge_payment", run:pending())
    assert(run:signal("CancelOrder")) -- arrives before the window opens: buffered
    env.actions.charge_payment:complete({ id = "pay-held" })
    assert.are.same({ status = "cancelled", refunded = 21 }, run:output())
    assert.are.same({ payment = "pay-held", amount = 21 }, env.actions.refund_payment:params(1))
  end)

  it("keeps its timer across a restart and ships once", function()
    local run = env:start("order_fulfillment", order())
    env:restart()
    env:advance("10m")
    env:restart()
    assert.are.equal("completed", run:status())
    assert.spy(env.actions.charge_payment).was.called(1)
    assert.spy(env.actions.ship).was.called(1)
  end)

  it("charges again with the same idempotency key after a crash during the charge", function()
    env.actions.charge_payment:hold()
    local run = env:start("order_fulfillment", order())
    assert.are.equal("running", run:status())
    env.actions.charge_payment:release() -- the next host's call goes through
    env:restart()                        -- the host dies with the charge in flight
    assert.are.equal("cooling_off", run:state())
    assert.spy(env.actions.charge_payment).was.called(2)
    local charge = env.actions.charge_payment
    assert.are.equal(charge:key(1), charge:key(2)) -- so the payment provider can deduplicate
    assert.are.same({ 1, 2 }, { charge:attempt(1), charge:attempt(2) })
    local lost = 0
    for _, e in ipairs(run:history()) do
      if e.kind == "action_lost" then lost = lost + 1 end
    end
    assert.are.equal(1, lost)
    env:advance("10m")
    assert.are.same({ status = "shipped", total = 21, tracking = "TRK-A-1" }, run:output())
  end)

  it("replays every history it wrote", function()
    env:start("order_fulfillment", order { id = "R-1" })                              -- shipped below
    env:start("order_fulfillment", order { id = "R-2" }):signal("CancelOrder")         -- cancelled
    env.actions.charge_payment:fail_next(1, { code = "declined", message = "no", retryable = false })
    env:start("order_fulfillment", order { id = "R-3" })                              -- payment failed
    stock = false
    env:start("order_fulfillment", order { id = "R-4" })                              -- out of stock
    stock = true
    env:start("order_fulfillment", order { id = "R-5", cooling_off = "1h" })           -- still cooling off
    env:restart()
    env:advance("10m")
    assert.is_true(wt.replay_all(env))
  end)
end)

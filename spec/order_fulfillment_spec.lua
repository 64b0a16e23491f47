local support = require "support.host"

local function order(over)
  local o = { id = "A-1", customer = "c-1", address = "1 Main St", cooling_off = "10m",
              items = { { sku = "tea", qty = 2, price = 4.5 }, { sku = "cup", qty = 1, price = 12 } } }
  for k, v in pairs(over or {}) do o[k] = v end
  return o
end

describe("order_fulfillment #integration", function()
  local host, stock, declined
  before_each(function()
    stock, declined = true, false
    host = support.new {
      actions = {
        reserve_inventory = function(p)
          if not stock then return { reserved = false, missing = { p.items[1].sku } } end
          return { reserved = true, reservation = "res-" .. p.order }
        end,
        release_inventory = function() return {} end,
        charge_payment = function(p)
          if declined then error({ code = "declined", message = "card declined" }) end
          return { id = "pay-" .. p.order, amount = p.amount }
        end,
        refund_payment = function() return {} end,
        ship = function(p) return { tracking = "TRK-" .. p.order } end,
        notify = function() return {} end,
      },
    }
  end)
  after_each(function() host:close() end)

  it("reserves, charges, waits out the cooling-off window, then ships", function()
    local id = host:start("order_fulfillment", order())
    assert.are.equal("cooling_off", host:get(id).state)
    assert.are.equal(21, host.calls.charge_payment[1].params.amount)
    assert.are.equal(0, #host.calls.ship)
    host:advance(600)
    local inst = host:get(id)
    assert.are.equal("completed", inst.status)
    assert.are.same({ status = "shipped", total = 21, tracking = "TRK-A-1" }, inst.output)
    assert.are.same({ total = 21, payment = "pay-A-1" }, inst.data)
    assert.are.same({ "action reserve_inventory", "action charge_payment", "action ship" },
      host:kinds(id, { action = true }))
  end)

  it("applies the shared pricing rules from workflows/lib", function()
    local id = host:start("order_fulfillment", order { items = { { sku = "tv", qty = 1, price = 200 } } })
    assert.are.equal(190, host:get(id).data.total)
  end)

  it("stops when an item is out of stock", function()
    stock = false
    local id = host:start("order_fulfillment", order())
    local inst = host:get(id)
    assert.are.equal("completed", inst.status)
    assert.are.same({ status = "out_of_stock", missing = { "tea" } }, inst.output)
    assert.are.equal(0, #host.calls.charge_payment)
    assert.are.equal(1, #host.calls.notify)
  end)

  it("releases the reservation when the payment is declined", function()
    declined = true
    local id = host:start("order_fulfillment", order())
    local inst = host:get(id)
    assert.are.same({ status = "payment_failed", reason = "card declined" }, inst.output)
    assert.are.same({ reservation = "res-A-1" }, host.calls.release_inventory[1].params)
    assert.are.equal(0, #host.calls.ship)
  end)

  it("refunds when the customer cancels during the cooling-off window", function()
    local id = host:start("order_fulfillment", order())
    host:advance(300)
    host:signal(id, "CancelOrder")
    local inst = host:get(id)
    assert.are.same({ status = "cancelled", refunded = 21 }, inst.output)
    assert.are.equal(1, #host.calls.refund_payment)
    assert.are.equal(0, #host.calls.ship)
  end)

  it("keeps its timer across a restart and ships once", function()
    local id = host:start("order_fulfillment", order())
    host:restart()
    host:advance(600)
    host:restart()
    assert.are.equal("completed", host:get(id).status)
    assert.are.equal(1, #host.calls.charge_payment)
    assert.are.equal(1, #host.calls.ship)
  end)
end)

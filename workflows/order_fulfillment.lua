-- An order: reserve stock, charge the customer, wait out a cooling-off window in which the
-- customer may still cancel for free, then ship. Out-of-stock and declined payments end
-- the order early (releasing what was reserved). A shipped or cancelled order is announced
-- to other systems through the outbox (order.shipped, order.cancelled), in the same
-- transaction as the step that decided it.
--
-- Input: { id = "A-17", customer = "c-9", address = "...", cooling_off = "10m",
--          items = { { sku = "tea", qty = 2, price = 4.5 }, ... } }
local pricing = require "lib.pricing"

return workflow.define {
  name = "order_fulfillment",
  version = 1,
  run = function(ctx, order)
    local total = pricing.total(order.items)
    ctx.data.total = total

    ctx:set_state("reserving")
    local stock = ctx.actions.reserve_inventory { order = order.id, items = order.items }
    if not stock.reserved then
      ctx:set_state("out_of_stock")
      ctx.actions.notify { to = order.customer, template = "out_of_stock", order = order.id }
      return { status = "out_of_stock", missing = stock.missing }
    end

    ctx:set_state("charging")
    local ok, payment = pcall(ctx.actions.charge_payment,
      { order = order.id, customer = order.customer, amount = total })
    if not ok then
      ctx.actions.release_inventory { reservation = stock.reservation }
      ctx:set_state("payment_failed")
      return { status = "payment_failed", reason = payment.message }
    end
    ctx.data.payment = payment.id

    ctx:set_state("cooling_off")
    local cancel = ctx:wait_for("CancelOrder", { timeout = order.cooling_off or "10m" })
    if cancel then
      ctx.actions.refund_payment { payment = payment.id, amount = total }
      ctx.actions.release_inventory { reservation = stock.reservation }
      ctx:set_state("cancelled_by_customer")
      ctx:emit("order.cancelled", { order = order.id, refunded = total })
      return { status = "cancelled", refunded = total }
    end

    ctx:set_state("shipping")
    local shipment = ctx.actions.ship { order = order.id, address = order.address }
    ctx:set_state("shipped")
    ctx:emit("order.shipped", { order = order.id, tracking = shipment.tracking, address = order.address })
    return { status = "shipped", total = total, tracking = shipment.tracking }
  end,
}

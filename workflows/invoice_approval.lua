-- An invoice goes from draft to a manager's decision. The manager has 72 hours to approve
-- or reject it; after that the invoice is escalated.
--
-- Input:  { id = "INV-1", amount = 1250 }
-- Events: Submit { user }, then Approve { user } or Reject { user, reason }
return workflow.define {
  name = "invoice_approval",
  version = 1,
  run = function(ctx, input)
    if type(input) ~= "table" or not input.id then
      error("invoice_approval needs an input like { id = \"INV-1\", amount = 1250 }")
    end
    ctx:set_state("draft")
    local submit = ctx:wait_for("Submit") -- buffered if it arrived earlier
    ctx.data.submitted_by = submit.data and submit.data.user

    ctx:set_state("awaiting_approval")
    ctx.actions.notify { to = "manager", invoice = input.id, amount = input.amount }
    local ev = ctx:wait_for({ "Approve", "Reject" }, { timeout = input.approval_window or "72h" })
    if not ev then
      ctx:set_state("escalated")
      ctx.log:warn("no decision in time, escalating", { invoice = input.id })
      return ctx.actions.escalate { invoice = input.id, amount = input.amount }
    end

    ctx:set_state(ev.name == "Approve" and "approved" or "rejected")
    return { decision = ev.name, by = ev.data and ev.data.user, reason = ev.data and ev.data.reason }
  end,
}

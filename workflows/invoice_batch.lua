-- A batch of invoices: one invoice_approval child per invoice, submitted by the batch; the
-- batch ends when every invoice has a decision (or was escalated), with the counts.
--
-- Input:  { invoices = { { id = "INV-1", amount = 1250 }, ... } }
-- Events: none for the batch; each child, "<batch id>/<invoice id>", takes Approve or Reject
--         (`wfhost signal batch-7/INV-1 Approve '{"user":"ann"}'`)
return workflow.define {
  name = "invoice_batch",
  version = 1,
  run = function(ctx, input)
    local kids = {}
    for i, inv in ipairs(input.invoices or {}) do
      kids[i] = ctx:start_child("invoice_approval", inv, { id = ctx.id .. "/" .. inv.id })
      kids[i]:signal("Submit", { user = "batch" })
    end
    ctx:set_state("awaiting_decisions")
    local counts = { approved = 0, rejected = 0, escalated = 0, failed = 0 }
    for _, kid in ipairs(kids) do
      local ok, out = pcall(kid.result, kid) -- one failed invoice must not sink the batch...
      if not ok and out.code == "cancelled" then error(out, 0) end -- ...but the batch's own cancellation does
      if not ok then counts.failed = counts.failed + 1
      elseif out.decision == "Approve" then counts.approved = counts.approved + 1
      elseif out.decision == "Reject" then counts.rejected = counts.rejected + 1
      else counts.escalated = counts.escalated + 1 end
    end
    return counts
  end,
}

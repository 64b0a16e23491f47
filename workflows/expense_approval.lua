-- expense_approval: a race with a timeout (a deferred choice) and escalation. The manager has
-- two days to decide; then the director is asked and has one more day; past that the claim is
-- rejected on its own. Whichever comes first wins: the losing timer is withdrawn.
local function decision(ctx, within)
  local which, ev = ctx:any {
    function() return ctx:wait_for { "Approve", "Reject" } end,
    function() ctx:sleep(within) end,
  }
  if which == 1 then return ev end
end

return workflow.define {
  name = "expense_approval",
  run = function(ctx, claim)
    ctx:set_state("with manager")
    ctx.actions.notify { to = claim.manager, claim = claim.id }
    local ev = decision(ctx, "48h")
    if not ev then
      ctx:set_state("escalated")
      ctx.actions.notify { to = claim.director, claim = claim.id, escalated = true }
      ev = decision(ctx, "24h")
    end
    if not ev then
      ctx:set_state("rejected")
      return { decision = "Reject", by = "timeout" }
    end
    ctx:set_state(ev.name == "Approve" and "approved" or "rejected")
    if ev.name == "Approve" then ctx.actions.pay { claim = claim.id, amount = claim.amount } end
    return { decision = ev.name, by = ev.data.user }
  end,
}

-- A new user gets a welcome email and must verify their address. Until they do, a reminder
-- goes out every `remind_every`; after `max_reminders` reminders the signup is abandoned.
--
-- Input:  { email = "ada@example.com", remind_every = "24h", max_reminders = 3 }
-- Events: EmailVerified
return workflow.define {
  name = "user_onboarding",
  version = 1,
  run = function(ctx, user)
    local max = user.max_reminders or 3
    ctx:set_state("welcomed")
    ctx.actions.send_email { to = user.email, template = "welcome" }

    local reminders = 0
    while not ctx:wait_for("EmailVerified", { timeout = user.remind_every or "24h" }) do
      if reminders == max then
        ctx:set_state("abandoned")
        ctx.actions.send_email { to = user.email, template = "signup_expired" }
        return { verified = false, reminders = reminders }
      end
      reminders = reminders + 1
      ctx.data.reminders = reminders
      ctx:set_state("reminded")
      ctx.actions.send_email { to = user.email, template = "verify_reminder", n = reminders }
    end

    ctx:set_state("verified")
    ctx.actions.send_email { to = user.email, template = "getting_started" }
    return { verified = true, reminders = reminders }
  end,
}

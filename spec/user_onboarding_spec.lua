-- user_onboarding: a welcome email, a reminder every period until EmailVerified, abandoned
-- after the last reminder.
local wt = require "workflow.testing"

describe("user_onboarding #integration", function()
  local env
  before_each(function()
    -- send_email's result is not used: the kit's mock (returning {}) is enough.
    env = wt.env { workflows = "workflows" }
  end)
  after_each(function() env:close() end)

  -- The templates of the emails sent, in order.
  local function templates()
    local t = {}
    for i = 1, #env.actions.send_email.calls do t[i] = env.actions.send_email:params(i).template end
    return t
  end

  it("welcomes, and finishes when the email is verified", function()
    local run = env:start("user_onboarding", { email = "ada@example.com" })
    assert.are.equal("welcomed", run:state())
    assert.are.same({ to = "ada@example.com", template = "welcome" }, env.actions.send_email:params(1))
    run:signal("EmailVerified")
    assert.are.equal("verified", run:state())
    assert.are.same({ verified = true, reminders = 0 }, run:output())
    assert.are.same({ "welcome", "getting_started" }, templates())
  end)

  it("sends a reminder every period until verified", function()
    local run = env:start("user_onboarding", { email = "bob@example.com", remind_every = "1h" })
    env:advance("1h")
    env:advance("1h")
    assert.are.equal("reminded", run:state())
    assert.are.same({ reminders = 2 }, run:data())
    assert.are.same({ to = "bob@example.com", template = "verify_reminder", n = 2 }, env.actions.send_email:params(3))
    run:signal("EmailVerified")
    assert.are.same({ verified = true, reminders = 2 }, run:output())
    assert.are.same({ "welcome", "verify_reminder", "verify_reminder", "getting_started" }, templates())
  end)

  it("reminds once a day by default", function()
    local run = env:start("user_onboarding", { email = "eve@example.com" })
    env:advance("23h59m59s")
    assert.spy(env.actions.send_email).was.called(1)
    env:advance(1)
    assert.spy(env.actions.send_email).was.called(2)
    assert.are.equal("reminded", run:state())
  end)

  it("gives up after the last reminder", function()
    local run = env:start("user_onboarding", { email = "cy@example.com", remind_every = "1d", max_reminders = 2 })
    env:advance("3d") -- the three timers fire one after the other, each at its due time
    assert.are.equal("completed", run:status())
    assert.are.equal("abandoned", run:state())
    assert.are.same({ verified = false, reminders = 2 }, run:output())
    assert.are.same({ "welcome", "verify_reminder", "verify_reminder", "signup_expired" }, templates())
    assert.is_nil(run:signal("EmailVerified")) -- too late
  end)

  it("takes a verification that arrived while a reminder was being sent", function()
    local run = env:start("user_onboarding", { email = "fay@example.com", remind_every = "1h" })
    env.actions.send_email:hold()
    env:advance("1h")
    assert.are.equal(1, env.actions.send_email:held())
    assert.are.equal("action send_email", run:pending())
    assert(run:signal("EmailVerified")) -- buffered until the loop waits again
    env.actions.send_email:release()
    env.actions.send_email:complete()
    assert.are.same({ verified = true, reminders = 1 }, run:output())
    assert.are.same({ "welcome", "verify_reminder", "getting_started" }, templates())
  end)

  it("fails when the welcome email cannot be sent", function()
    env.actions.send_email:fail_next(1, { code = "bounced", message = "no such mailbox", retryable = false })
    local run = env:start("user_onboarding", { email = "nobody@example.com" })
    assert.are.equal("failed", run:status())
    assert.matches("action 'send_email' failed: bounced: no such mailbox", run:error(), 1, true)
    assert.matches("user_onboarding.lua:12", run:error(), 1, true)
  end)

  it("fails when a reminder cannot be sent", function()
    local run = env:start("user_onboarding", { email = "gus@example.com", remind_every = "1h" })
    env.actions.send_email:time_out_next(3) -- every attempt of the default policy
    env:advance("1h")
    env:advance("1m")
    assert.are.equal("failed", run:status())
    assert.are.equal("reminded", run:state())
    assert.matches("action 'send_email' failed: retries_exhausted: 3 attempts failed; last error: no outcome "
      .. "within 10000 ms (the attempt timeout)", run:error(), 1, true)
    env:advance("1h") -- a failed instance arms no more timers
    assert.spy(env.actions.send_email).was.called(4)
  end)

  it("survives restarts between reminders without repeating emails", function()
    local run = env:start("user_onboarding", { email = "di@example.com", remind_every = "1h" })
    env:advance("1h")
    env:restart()
    env:advance("1h")
    env:restart()
    run:signal("EmailVerified")
    assert.are.same({ verified = true, reminders = 2 }, run:output())
    assert.spy(env.actions.send_email).was.called(4)
  end)

  it("replays every history it wrote", function()
    env:start("user_onboarding", { email = "a@example.com" }):signal("EmailVerified")
    env:start("user_onboarding", { email = "b@example.com", remind_every = "1h" })
    env:start("user_onboarding", { email = "c@example.com", remind_every = "1h", max_reminders = 1 })
    env.actions.send_email:fail_next(1, "permanent")
    env:start("user_onboarding", { email = "d@example.com" })
    env:advance("90m")
    env:restart()
    env:advance("1h")
    assert.is_true(wt.replay_all(env))
  end)
end)

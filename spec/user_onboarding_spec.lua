local support = require "support.host"

describe("user_onboarding #integration", function()
  local host
  before_each(function()
    host = support.new { actions = { send_email = function(p) return { sent = p.template } end } }
  end)
  after_each(function() host:close() end)

  local function templates()
    local t = {}
    for _, c in ipairs(host.calls.send_email) do t[#t + 1] = c.params.template end
    return t
  end

  it("welcomes, and finishes when the email is verified", function()
    local id = host:start("user_onboarding", { email = "ada@example.com" })
    assert.are.equal("welcomed", host:get(id).state)
    host:signal(id, "EmailVerified")
    assert.are.same({ verified = true, reminders = 0 }, host:get(id).output)
    assert.are.same({ "welcome", "getting_started" }, templates())
  end)

  it("sends a reminder every period until verified", function()
    local id = host:start("user_onboarding", { email = "bob@example.com", remind_every = "1h" })
    host:advance(3600)
    host:advance(3600)
    assert.are.equal("reminded", host:get(id).state)
    assert.are.same({ reminders = 2 }, host:get(id).data)
    host:signal(id, "EmailVerified")
    assert.are.same({ verified = true, reminders = 2 }, host:get(id).output)
    assert.are.same({ "welcome", "verify_reminder", "verify_reminder", "getting_started" }, templates())
  end)

  it("gives up after the last reminder", function()
    local id = host:start("user_onboarding", { email = "cy@example.com", remind_every = "1d", max_reminders = 2 })
    for _ = 1, 3 do host:advance(86400) end
    local inst = host:get(id)
    assert.are.equal("abandoned", inst.state)
    assert.are.same({ verified = false, reminders = 2 }, inst.output)
    assert.are.same({ "welcome", "verify_reminder", "verify_reminder", "signup_expired" }, templates())
  end)

  it("survives restarts between reminders without repeating emails", function()
    local id = host:start("user_onboarding", { email = "di@example.com", remind_every = "1h" })
    host:advance(3600)
    host:restart()
    host:advance(3600)
    host:restart()
    host:signal(id, "EmailVerified")
    assert.are.same({ verified = true, reminders = 2 }, host:get(id).output)
    assert.are.equal(4, #host.calls.send_email)
  end)
end)

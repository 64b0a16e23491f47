-- api_integration: fetch a record through http.request, retried by the per-call policy; give
-- up after five attempts or two minutes, reject at once on a permanent error. The spec mocks
-- http.request (a built-in action) like any other action: no network is used.
local wt = require "workflow.testing"

describe("api_integration #integration", function()
  local env
  local URL = "https://api.example.com/accounts/42"
  local function ok_response()
    return { status = 200, headers = { ["content-type"] = "application/json" }, body = '{"id":42,"name":"Ada"}' }
  end
  local unavailable = { type = "http_503", message = "HTTP 503 from " .. URL, retryable = true }

  before_each(function()
    env = wt.env { workflows = "workflows", actions = { ["http.request"] = ok_response } }
  end)
  after_each(function() env:close() end)

  it("fetches the record", function()
    local run = env:start("api_integration", { url = URL })
    assert.are.same({ status = "ok", record = { id = 42, name = "Ada" } }, run:output())
    assert.are.equal("fetched", run:state())
    assert.are.same({ url = URL, headers = { Accept = "application/json" }, timeout = 5000 },
      env.actions["http.request"]:params(1))
  end)

  it("rides out a flaky API with retries, keeping the idempotency key", function()
    env.actions["http.request"]:fail_next(2, unavailable)
    local run = env:start("api_integration", { url = URL })
    assert.are.equal("waiting", run:status()) -- backing off, a durable timer
    env:advance("10s")
    assert.are.equal("completed", run:status())
    assert.are.equal("ok", run:output().status)
    assert.spy(env.actions["http.request"]).was.called(3)
    assert.are.equal(3, env.actions["http.request"]:attempt(3))
    assert.are.equal(env.actions["http.request"]:key(1), env.actions["http.request"]:key(3))
  end)

  it("waits as long as a Retry-After hint says", function()
    env.actions["http.request"]:fail_next(1, { type = "http_429", message = "slow down", retry_after = "20s" })
    local run = env:start("api_integration", { url = URL })
    env:advance("19s")
    assert.spy(env.actions["http.request"]).was.called(1)
    env:advance("1s")
    assert.are.equal("ok", run:output().status)
  end)

  it("gives up after five attempts", function()
    env.actions["http.request"]:fail_next(5, unavailable)
    local run = env:start("api_integration", { url = URL })
    env:advance("2m")
    assert.are.same({ status = "gave_up", attempts = 5, error = "http_503" }, run:output())
    assert.are.equal("gave_up", run:state())
    assert.are.equal("retries_exhausted", run:data().last_error.code)
  end)

  it("gives up when attempts time out, within the total timeout", function()
    env.actions["http.request"]:time_out_next(100) -- the API never answers: 10s per attempt
    local run = env:start("api_integration", { url = URL })
    env:advance("3m")
    local out = run:output()
    assert.are.equal("gave_up", out.status)
    assert.are.equal("timeout", out.error)
    assert.is_true(out.attempts >= 1 and out.attempts <= 5)
  end)

  it("rejects at once on a permanent error, without retrying", function()
    env.actions["http.request"]:fail_next(1, { type = "http_404", message = "HTTP 404", retryable = false })
    local run = env:start("api_integration", { url = URL })
    assert.are.same({ status = "rejected", error = "http_404", message = "HTTP 404" }, run:output())
    assert.spy(env.actions["http.request"]).was.called(1)
  end)

  it("does not retry a 501, a non_retryable type", function()
    env.actions["http.request"]:fail_next(1, { type = "http_501", message = "HTTP 501", retryable = true })
    local run = env:start("api_integration", { url = URL })
    assert.are.equal("rejected", run:output().status)
    assert.spy(env.actions["http.request"]).was.called(1)
  end)

  it("keeps its backoff across a restart in the middle", function()
    env.actions["http.request"]:fail_next(1, unavailable)
    local run = env:start("api_integration", { url = URL })
    env:restart()
    env:advance("1s") -- the first delay is at most 500ms (full jitter)
    assert.are.equal("ok", run:output().status)
    assert.spy(env.actions["http.request"]).was.called(2)
    assert.is_true(wt.replay_all(env))
  end)
end)

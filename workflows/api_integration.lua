-- Fetches a record from an HTTP API that sometimes fails, through the built-in action
-- `http.request`, and shows what a workflow can do when the API never recovers.
--
-- Input: { url = "https://api.example.com/accounts/42" }
--
-- The host retries an action step by itself, durably: each failed attempt and the time of the
-- next one are journaled, so a host restarted in the middle of a backoff waits out the rest of
-- it rather than starting over. The workflow only says how hard to try (the per-call options
-- below) and what to do if every attempt fails.
return workflow.define {
  name = "api_integration",
  version = 1,
  run = function(ctx, input)
    ctx:set_state("fetching")

    -- How http.request classes what happens (the policy then decides what follows):
    --   2xx, 3xx         the result: { status =, headers = { lowercased names }, body = }
    --   429, 5xx         transient: tried again; a Retry-After header sets the delay
    --   other 4xx        permanent: raised at once (asking again gets the same answer)
    --   no answer        transient: http_connect, http_dns, http_tls, http_timeout, ...
    local ok, res = pcall(ctx.actions["http.request"], {
      url = input.url,
      -- Params are journaled in the instance's history: keep secrets (an API token) out of
      -- them, in an action of the host's own that adds them.
      headers = { Accept = "application/json" },
      timeout = 5000, -- ms for the request itself; the attempt timeout below bounds it too
    }, {
      timeout = "10s",               -- the host gives up on one attempt after this
      retry = {
        max_attempts = 5,            -- the first call and four retries
        backoff = "exponential",     -- at most 500ms, 1s, 2s, 4s ... (jitter below)
        initial_delay = "500ms",
        max_delay = "30s",
        jitter = "full",             -- spread the retries of many instances apart
        total_timeout = "2m",        -- never more than this for the whole step
        non_retryable = { "http_501" }, -- a 501 will not get better: do not retry it
      },
    })

    if ok then
      ctx:set_state("fetched")
      return { status = "ok", record = json.decode(res.body) }
    end

    -- Every failure arrives as a table:
    --   code       "retries_exhausted" or "deadline_exceeded" when the host gave up
    --              retrying; otherwise the error type itself ("http_404", "bad_params")
    --   type       the last error's type, message its text
    --   attempts   how many attempts were made
    --   retryable  false: the host has already done all the retrying it was asked to
    --   cause      the last failed attempt { attempt, class, type, message }, if any
    -- A code a workflow does not expect (a cancellation, say) is raised again, so that it
    -- ends the instance as it would have without the pcall.
    if type(res) ~= "table" or res.code == "cancelled" then error(res, 0) end

    ctx.data.last_error = { code = res.code, type = res.type, message = res.message }
    if res.code == "retries_exhausted" or res.code == "deadline_exceeded" then
      ctx:set_state("gave_up")
      return { status = "gave_up", attempts = res.attempts, error = res.type }
    end
    ctx:set_state("rejected")
    return { status = "rejected", error = res.type, message = res.message }
  end,
}

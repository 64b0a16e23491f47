-- A cron job: every night at 02:00 Berlin time the host starts an instance that builds the
-- report of the day before and publishes it to the recipients. The schedule is part of the
-- definition: a host that loads this file writes it to its database and fires it; `wfhost
-- schedule list` shows it.
--
-- Each firing is an instance with the id "nightly_report@<firing time in UTC>", so one night
-- can never produce two reports, and its input is the schedule's input plus
-- `schedule = { id, at, at_ms }` (the firing time). A host that was down at 02:00 runs the
-- missed night once when it comes back (catch_up = "once"); a report still running at the
-- next firing makes that night's firing skip (overlap = "skip", the default).
--
-- Started by hand (`wfhost start nightly_report '{"day":"2026-01-31"}'`) it reports that day.
return workflow.define {
  name = "nightly_report",
  version = 1,
  schedule = {
    cron = "0 2 * * *",
    timezone = "Europe/Berlin",
    catch_up = "once",
    input = { recipients = { "ops@example.com" } },
  },
  run = function(ctx, input)
    -- The firing time is UTC; 02:00 in Berlin is still the same calendar day in UTC.
    local day = input.day or (input.schedule and input.schedule.at:sub(1, 10)) or "today"
    ctx:set_state("publishing")
    local recipients = input.recipients or { "ops@example.com" }
    local report = ctx.actions.publish_report { day = day, recipients = recipients }
    ctx:set_state("published")
    return { day = day, recipients = #recipients, report = report }
  end,
}

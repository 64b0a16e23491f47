-- workflow.testing: test workflows with busted against the real engine, on virtual time.
--
--   local wt = require "workflow.testing"
--   local env = wt.env { workflows = "workflows", actions = { notify = function(p) return { sent = true } end } }
--   local run = env:start("invoice_approval", { id = "inv-1", amount = 500 })
--   run:signal("Submit", { user = "u1" })
--   env:advance("72h")
--   assert.are.equal("completed", run:status())
--   assert.spy(env.actions.escalate).was.called(1)
--   env:close()
--
-- Each env is an isolated host on a temporary database with its own virtual clock. Every
-- action a workflow calls is a busted spy: a Lua function given in `actions`, or a default
-- that returns {} for any other name. Mocked actions go through the host's retries, timeouts
-- and circuit breakers like C actions, on the virtual clock, with the policy given at
-- registration: actions = { charge = { fn = function(p) ... end, policy = { retry = {...},
-- breaker = {...} } } }. Faults can be injected per action (fail_next, time_out_next,
-- hold/complete). When a spec fails, the timelines of the env's instances are printed.
--
-- The outbox: env:emitted(topic) lists what the workflows emitted ({ topic, payload, id,
-- instance }); subscribers = { audit = { pattern = "order.*", fn = ..., policy = { retry =
-- ... } } } (or env:subscribe) registers mocks that receive the messages once committed, with
-- the same fault injection as actions (fail_next, time_out_next, hold/complete).
local wfhost = require "wfhost"
local spy = require "luassert.spy"

local M = {}

-- Durations exactly as workflows read them: the host's own parser.
local function ms(d)
  local ok, v = pcall(wfhost.duration_ms, d)
  if not ok then error(tostring(v):gsub("^.-: ", ""), 3) end
  return v
end

local open_envs = setmetatable({}, { __mode = "k" })

---------------------------------------------------------------------------------------------
-- Mocked actions
---------------------------------------------------------------------------------------------

local faults = {
  transient = { type = "transient", message = "injected transient failure", retryable = true },
  permanent = { type = "permanent", message = "injected permanent failure", retryable = false },
  timeout = "timeout", -- the call never answers: the host times it out at its deadline
}

-- A fault: "transient", "permanent", "timeout", or an error table { type (or code), message,
-- retryable, retry_after = a duration hint for the next attempt }.
local function fault(err)
  if err == nil then return faults.transient end
  if type(err) == "string" then
    return faults[err] or { type = "error", message = err, retryable = false }
  end
  if type(err) == "table" and err.retry_after ~= nil then
    local e = {}
    for k, v in pairs(err) do e[k] = v end
    e.retry_after = ms(err.retry_after)
    if e.retryable == nil then e.retryable = true end
    return e
  end
  return err
end

-- A spy with fault injection. The spy records each call's (params, call); call.key is the
-- idempotency key, call.attempt the attempt, call.deadline when the host gives up on it.
local function new_mock(env, name, impl, what)
  local mock
  mock = spy.new(function(params, call)
    local f = table.remove(mock._faults, 1)
    if f == "timeout" then
      mock._swallowed[#mock._swallowed + 1] = call -- kept, never completed
      return wfhost.pending
    end
    if f then error(f, 0) end
    if mock._holding then
      mock._held[#mock._held + 1] = call
      return wfhost.pending
    end
    if impl then return impl(params, call) end
    return {}
  end)
  mock._name, mock._faults, mock._held, mock._holding, mock._env = name, {}, {}, false, env
  mock._swallowed = {}

  -- The next n calls fail with err ("transient", "permanent", "timeout", or an error table
  -- { type, message, retryable, retry_after }).
  function mock:fail_next(n, err)
    for _ = 1, n or 1 do self._faults[#self._faults + 1] = fault(err) end
    return self
  end
  -- The next n calls never answer: each times out at its attempt timeout (virtual time).
  function mock:time_out_next(n)
    return self:fail_next(n, "timeout")
  end
  -- From now on, calls are held until :complete() or :fail(), oldest first.
  function mock:hold()
    self._holding = true
    return self
  end
  -- Stops holding new calls (held ones stay held until completed).
  function mock:release()
    self._holding = false
    return self
  end
  -- The number of calls held now.
  function mock:held()
    return #self._held
  end
  local function take(self)
    local call = table.remove(self._held, 1)
    if not call then error(("%s '%s' has nothing held"):format(what or "action", self._name), 3) end
    return call
  end
  -- Completes the oldest held call with result, then runs the workflows until quiet.
  function mock:complete(result)
    take(self):ok(result == nil and {} or result)
    self._env:settle()
    return self
  end
  -- Fails the oldest held call, then runs the workflows until quiet.
  function mock:fail(err)
    take(self):fail(fault(err))
    self._env:settle()
    return self
  end
  -- A subscriber's mock: the message of call i ({ id, topic, payload, attempt, instance }),
  -- and every message it received, in order, one entry per attempt.
  function mock:message(i) return self.calls[i] and self.calls[i].vals[1] end
  function mock:messages()
    local out = {}
    for i, c in ipairs(self.calls) do out[i] = c.vals[1] end
    return out
  end
  -- params and idempotency key of call i (1 = the first).
  function mock:params(i) return self.calls[i] and self.calls[i].vals[1] end
  function mock:key(i) return self.calls[i] and self.calls[i].vals[2].key end
  function mock:attempt(i) return self.calls[i] and self.calls[i].vals[2].attempt end
  return mock
end

---------------------------------------------------------------------------------------------
-- Runs
---------------------------------------------------------------------------------------------

local Run = {}
Run.__index = Run

local function get(run)
  return assert(run.env.h:get(run.id))
end

function Run:status() return get(self).status end
function Run:state() return get(self).state end
function Run:data() return get(self).data end
function Run:output() return get(self).output end
function Run:error() return get(self).error end
-- The progress set by ctx:progress: percent (0 to 100) and message, or nil if never set.
function Run:progress()
  local info = get(self)
  return info.progress, info.progress_message
end
-- What the instance waits on ("event Approve|Reject (timeout at ...)", "timer until ...").
function Run:pending() return get(self).waiting_for end
function Run:history() return assert(self.env.h:history(self.id)) end

-- What the instance emitted to the outbox, in order: { { topic, payload, id, instance }, ... },
-- only those of topic if given.
function Run:emitted(topic)
  local out = {}
  for _, e in ipairs(self:history()) do
    if e.kind == "emit" and (topic == nil or e.name == topic) then
      out[#out + 1] = { topic = e.name, payload = e.data.payload, id = e.data.id, instance = self.id, at = e.at }
    end
  end
  return out
end

-- Sends an event and runs the workflows until quiet. Returns true, or nil and the error.
function Run:signal(event, data)
  local ok, err, code = self.env.h:signal(self.id, event, data)
  if not ok then return nil, err, code end
  self.env:settle()
  return true
end

function Run:cancel()
  assert(self.env.h:cancel(self.id))
  self.env:settle()
end

function Run:retry()
  assert(self.env.h:retry(self.id))
  self.env:settle()
end

local function brief(v)
  if v == nil then return "" end
  local ok, s = pcall(require("cjson").encode, v)
  s = ok and s or tostring(v)
  return #s > 90 and s:sub(1, 87) .. "..." or s
end

-- The history as a readable timeline.
function Run:timeline()
  local info = get(self)
  local lines = { ("instance %s (%s@%d): %s%s"):format(self.id, info.workflow, info.version, info.status,
    info.state and (", state " .. info.state) or "") }
  if info.error then lines[#lines + 1] = "  error: " .. info.error:gsub("\n", "\n  ") end
  local t0 = self.env.t0
  for _, e in ipairs(self:history()) do
    lines[#lines + 1] = ("  %4d  +%-10s %4s  %-15s %-16s %s"):format(e.pos, ("%.3fs"):format((e.at - t0) / 1000),
      e.seq > 0 and tostring(e.seq) or "", e.kind, e.name or "", brief(e.data))
  end
  return table.concat(lines, "\n")
end

Run.__tostring = Run.timeline

---------------------------------------------------------------------------------------------
-- The env
---------------------------------------------------------------------------------------------

local Env = {}
Env.__index = Env

local function tmpdb()
  local p = os.tmpname()
  os.remove(p)
  return p .. ".db"
end

local function remove_db(p)
  for _, suffix in ipairs { "", "-wal", "-shm", ".lock" } do os.remove(p .. suffix) end
end

local function open(env)
  local h, err = wfhost.open {
    db = env.db, workflows = env.workflows, virtual_time = true, now = env.clock,
    seed = env.seed, log_level = env.log_level,
    instruction_budget = env.instruction_budget, memory_limit = env.memory_limit,
    history_warn = env.history_warn, history_limit = env.history_limit, max_payload = env.max_payload,
  }
  if not h then error("workflow.testing: " .. tostring(err), 3) end
  env.h = h
  for _, plugin in ipairs(env.plugins) do assert(h:load_plugin(plugin)) end
  -- Every action name without a C action of its own goes to its mock. Actions the spec
  -- names are registered by name, with their policy: they replace a built-in or plugin action
  -- of the same name (a spec mocks http.request like any other).
  assert(h:register_action("*", function(params, call)
    return env.actions[call.action](params, call)
  end))
  for name, sub in pairs(env._subs) do
    local ok, err = h:subscribe(name, sub.pattern, function(msg, delivery) return env.subscribers[name](msg, delivery) end,
      sub.policy)
    if not ok then
      h:close()
      env.h = nil
      error("workflow.testing: " .. tostring(err), 3)
    end
  end
  for name, policy in pairs(env._given) do
    if policy == true then policy = nil end
    local ok, err = h:register_action(name, function(params, call) return env.actions[name](params, call) end, policy)
    if not ok then
      h:close()
      env.h = nil
      error("workflow.testing: " .. tostring(err), 3)
    end
  end
  if not env.restart_every_step then assert(h:drain()) end
end

-- wt.env { workflows = "workflows", actions = { name = fn }, plugins = { "x.so" },
--          now = ms since epoch, seed = n, log_level = "warn",
--          history_warn = n, history_limit = n, max_payload = bytes }
function M.env(opts)
  opts = opts or {}
  local env = setmetatable({
    db = tmpdb(), workflows = opts.workflows or "workflows", plugins = opts.plugins or {},
    clock = opts.now or 1700000000000, seed = opts.seed or 1, log_level = opts.log_level or "none",
    instruction_budget = opts.instruction_budget, memory_limit = opts.memory_limit, runs = {},
    restart_every_step = opts.restart_every_step, restarts = 0,
    history_warn = opts.history_warn, history_limit = opts.history_limit, max_payload = opts.max_payload,
  }, Env)
  env.t0 = env.clock
  local mocks = {}
  env._mocks = mocks
  env._given = {} -- name -> its policy, or true
  env.actions = setmetatable({}, {
    __index = function(_, name)
      local m = mocks[name]
      if not m then
        m = new_mock(env, name, nil)
        mocks[name] = m
      end
      return m
    end,
    __newindex = function() error("env.actions: pass implementations to wt.env { actions = ... }", 2) end,
  })
  env._subs = {} -- name -> { pattern, policy }
  env.subscribers = setmetatable({}, {
    __newindex = function() error("env.subscribers: use wt.env { subscribers = ... } or env:subscribe()", 2) end,
  })
  for name, sub in pairs(opts.subscribers or {}) do env:_add_subscriber(name, sub, 2) end
  for name, a in pairs(opts.actions or {}) do
    local fn = a
    if type(a) == "table" then
      if a.policy ~= nil and type(a.policy) ~= "table" then
        error(("action '%s': policy must be a table { retry = ..., breaker = ... }"):format(name), 2)
      end
      fn = a.fn or function() return {} end
    end
    env._given[name] = type(a) == "table" and a.policy or true
    if type(fn) ~= "function" then error(("action '%s' must be a function or { fn = function, policy = {...} }"):format(name), 2) end
    mocks[name] = new_mock(env, name, fn)
  end
  open(env)
  open_envs[env] = true
  return env
end

-- A subscriber: a pattern ("order.*"), or { pattern =, fn = function(msg, delivery), policy = {
-- retry = ... } }. Its mock (env.subscribers[name]) is a spy like an action's.
function Env:_add_subscriber(name, sub, level)
  if type(sub) == "string" then sub = { pattern = sub } end
  if type(sub) ~= "table" or type(sub.pattern) ~= "string" then
    error(("subscriber '%s' must be a pattern or { pattern = \"order.*\", fn =, policy = }"):format(tostring(name)), level + 1)
  end
  if sub.fn ~= nil and type(sub.fn) ~= "function" then error(("subscriber '%s': fn must be a function"):format(name), level + 1) end
  self._subs[name] = { pattern = sub.pattern, policy = sub.policy }
  rawset(self.subscribers, name, new_mock(self, name, sub.fn or function() end, "subscriber"))
end

-- Registers a subscriber now (and again after env:restart()); returns its mock.
function Env:subscribe(name, pattern, opts)
  local sub = { pattern = pattern }
  if type(opts) == "function" then sub.fn = opts
  elseif type(opts) == "table" then sub.fn, sub.policy = opts.fn, opts.policy
  elseif opts ~= nil then error("env:subscribe(name, pattern, fn | { fn =, policy = })", 2) end
  self:_add_subscriber(name, sub, 2)
  local ok, err = self.h:subscribe(name, pattern, function(msg, delivery) return self.subscribers[name](msg, delivery) end,
    sub.policy)
  if not ok then error("workflow.testing: " .. tostring(err), 2) end
  self:settle()
  return self.subscribers[name]
end

-- What every instance of the env emitted, oldest first: { { topic, payload, id, instance } },
-- only those of topic if given. Within an instance in emit order; across instances by time.
function Env:emitted(topic)
  local all, instances = {}, self:instances()
  for k = #instances, 1, -1 do -- oldest instance first
    for _, e in ipairs(self:run(instances[k].id):emitted(topic)) do
      all[#all + 1] = e
      e._n = #all
    end
  end
  table.sort(all, function(a, b) if a.at ~= b.at then return a.at < b.at end return a._n < b._n end)
  for _, e in ipairs(all) do e._n, e.at = nil, nil end
  return all
end

-- What the outbox still holds (pending, unrouted, failed), or only status "pending"/"failed":
-- { { id, topic, instance, payload, subscriber, status, attempts, next_at, last_error } }.
function Env:outbox(status)
  return assert(self.h:outbox { status = status })
end

-- Re-queues a message's failed deliveries (an operator's `wfhost outbox retry`), then runs.
function Env:outbox_retry(id, subscriber)
  local ok, err = self.h:outbox_retry(id, subscriber)
  if not ok then error(err, 2) end
  self:settle()
end

-- Outcomes (and ends) journaled so far, across the env's instances: progress made.
local progress_kinds = { action_result = true, action_error = true, event = true, timeout = true,
  timer_fired = true, child_ended = true, cancel = true, withdrawn = true, compensation = true, completed = true, failed = true,
  cancelled = true, suspended = true }
local function progress(env)
  local n = 0
  for _, info in ipairs(assert(env.h:list())) do
    for _, e in ipairs(assert(env.h:history(info.id))) do
      if progress_kinds[e.kind] then n = n + 1 end
    end
  end
  return n
end

-- Runs the workflows until nothing is ready (actions held by a mock stay held). With
-- restart_every_step, the host is restarted (a new host on the same database, as after a
-- crash) after every step that journaled an outcome, and the work goes on there.
function Env:settle()
  if not self.restart_every_step then
    assert(self.h:drain())
    return
  end
  local seen = progress(self)
  while true do
    local busy, err = self.h:step()
    if busy == nil then error(err, 2) end
    if not busy then return end
    local now = progress(self)
    if now > seen then
      seen = now
      self.restarts = self.restarts + 1
      self:restart()
    end
  end
end

-- Starts an instance and runs until quiet; returns its run handle.
function Env:start(workflow, input, id)
  local rid, err = self.h:start(workflow, input, id)
  if not rid then error(err, 2) end
  self:settle()
  local run = setmetatable({ env = self, id = rid }, Run)
  self.runs[#self.runs + 1] = run
  return run
end

-- env.h is the `wfhost` module's host underneath, for what the kit does not wrap (for example
-- env.h:start + env.h:signal + env:settle() to send an event before the instance first runs).

-- A run handle for an instance of this env's database.
function Env:run(id)
  return setmetatable({ env = self, id = id }, Run)
end

-- Virtual seconds since the epoch.
function Env:now()
  return self.h:now() / 1000
end

-- Moves the virtual clock forward by a duration ("72h", 90), firing timers in due order: the
-- clock stops at each due time, and the workflows run until quiet, before going on.
function Env:advance(d)
  local target = self.h:now() + ms(d)
  for _ = 1, 1000000 do
    local due = self.h:next_timer()
    if not due or due > target then
      self.h:set_now(target)
      self:settle()
      return
    end
    if due > self.h:now() then self.h:set_now(due) end
    self:settle()
  end
  error("advance: more than a million timers fell due (a workflow sleeping in a loop?)", 2)
end

-- Drops every live coroutine: a new host on the same database (a fresh Lua state) rebuilds
-- every instance by replay. A crash, without waiting for one.
function Env:restart()
  local now = self.h:now()
  -- Calls held by mocks die with the host; the new host invokes those actions again.
  for _, m in pairs(self._mocks) do m._held, m._swallowed = {}, {} end
  for _, m in pairs(self.subscribers) do m._held, m._swallowed = {}, {} end
  self.h:close()
  self.clock = now
  open(self)
end

-- The circuit breakers: { { action, key, state, calls, failures, failure_ratio, open_until } }.
function Env:breakers()
  return assert(self.h:breakers())
end

-- The schedules (from definitions and added through env.h), with their counters.
function Env:schedules()
  return assert(self.h:schedules())
end

-- The state of an action's breaker ("closed" if it has none yet).
function Env:breaker(action, key)
  for _, b in ipairs(self:breakers()) do
    if b.action == action and b.key == (key or "") then return b.state, b end
  end
  return "closed"
end

-- Opens a breaker by hand until env:close_breaker() (an operator's isolate), then runs.
function Env:isolate(action, key)
  assert(self.h:isolate(action, key))
  self:settle()
end

function Env:close_breaker(action, key)
  assert(self.h:close_breaker(action, key))
  self:settle()
end

-- Counters of attempts by outcome, retries by reason, rejections, breaker changes.
function Env:action_stats()
  return self.h:action_stats()
end

-- The loaded workflow versions, and those unfinished instances run:
-- { { workflow, version, loaded, newest, active, file } }, by name and version.
function Env:versions()
  return assert(self.h:workflows())
end

-- Every instance of the database, newest first.
function Env:instances()
  return assert(self.h:list())
end

function Env:close()
  open_envs[self] = nil
  if self.h then self.h:close() end
  self.h = nil
  remove_db(self.db)
end

---------------------------------------------------------------------------------------------
-- Restarts at every step
---------------------------------------------------------------------------------------------

-- How each instance ended: status, output, the first line of its error, and its commands in
-- order (kind, name) -- what a crash must not change.
local function deep_equal(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not deep_equal(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local command_kinds = { action = true, wait = true, sleep = true, now = true, random = true, uuid = true,
  child = true, signal_child = true, cancel_child = true }
local function outcome_of(env)
  local out = {}
  for _, info in ipairs(assert(env.h:list())) do
    local cmds = {}
    for _, e in ipairs(assert(env.h:history(info.id))) do
      if command_kinds[e.kind] and e.seq > #cmds then cmds[#cmds + 1] = e.kind .. " " .. tostring(e.name or "") end
    end
    out[info.id] = { status = info.status, output = info.output,
      error = info.error and info.error:match("^[^\n]*"), commands = cmds }
  end
  return out
end

-- Runs scenario(env) on a fresh env made with opts, then again on one whose host restarts
-- after every step that journaled an outcome, and fails unless every instance (give them ids)
-- ends the same way with the same commands. Returns the first env's outcome by instance id.
-- Assert on statuses and outputs inside the scenario: action spies count the attempts a
-- restart repeats (actions are at-least-once).
function M.check_restarts(opts, scenario)
  local plain = {}
  for k, v in pairs(opts or {}) do plain[k] = v end
  local env = M.env(plain)
  local ok, err = pcall(scenario, env)
  local want = ok and outcome_of(env)
  env:close()
  if not ok then error(err, 0) end
  local o2 = {}
  for k, v in pairs(plain) do o2[k] = v end
  o2.restart_every_step = true
  local renv = M.env(o2)
  ok, err = pcall(scenario, renv)
  local got = ok and outcome_of(renv)
  local restarts = renv.restarts
  if not ok then
    local t = {}
    for _, info in ipairs(renv:instances()) do t[#t + 1] = renv:run(info.id):timeline() end
    renv:close()
    error(("with a restart at every step (%d restarts): %s\n%s"):format(restarts, tostring(err), table.concat(t, "\n")), 0)
  end
  renv:close()
  if restarts == 0 then error("check_restarts: the scenario made no step to restart after", 2) end
  for id, w in pairs(want) do
    local g = got[id]
    local same = g and g.status == w.status and deep_equal(g.output, w.output) and g.error == w.error
      and table.concat(g.commands, "\n") == table.concat(w.commands, "\n")
    if not same then
      error(("instance %s ends differently with a restart at every step (%d restarts):\n  without: %s %s %s\n    %s\n  with:    %s %s %s\n    %s")
        :format(id, restarts, w.status, tostring(w.output), tostring(w.error), table.concat(w.commands, ", "),
          g and g.status, g and tostring(g.output), g and tostring(g.error), g and table.concat(g.commands, ", ") or ""), 2)
    end
  end
  return want, restarts
end

---------------------------------------------------------------------------------------------
-- Replay checks
---------------------------------------------------------------------------------------------

-- Replays every instance of the env against the code loaded now (no actions run, nothing is
-- written) and fails, with the divergence and the timeline, on the first non-determinism.
function M.replay_all(env)
  for _, info in ipairs(env:instances()) do
    local ok, report = env.h:replay_check(info.id)
    if not ok then
      error(("replay of %s diverges: %s\n%s"):format(info.id, tostring(report), env:run(info.id):timeline()), 2)
    end
  end
  return true
end

-- Replays the histories in a database (a copy: the database may be in use by a running host)
-- against the workflows in dir. Returns a list of { id =, workflow =, status =, divergence = }
-- for the instances that diverge (empty when all agree), and the number checked.
function M.replay(db, dir)
  local f = io.open(db, "rb") -- opening a client would create a mistyped path, and pass
  if not f then error("workflow.testing.replay: no database at " .. tostring(db), 2) end
  f:close()
  local copy = tmpdb()
  local client = assert(wfhost.open { db = db, client = true, log_level = "none" })
  local ok, err = client:snapshot(copy)
  client:close()
  if not ok then error("workflow.testing.replay: " .. tostring(err), 2) end
  local h, oerr = wfhost.open { db = copy, workflows = dir, log_level = "none" }
  if not h then
    remove_db(copy)
    error("workflow.testing.replay: " .. tostring(oerr), 2)
  end
  local diverging, n = {}, 0
  local checked, cerr = pcall(function()
    for _, info in ipairs(assert(h:list())) do
      n = n + 1
      local agrees, report = h:replay_check(info.id)
      if agrees == nil then report = "cannot check: " .. tostring(report) end
      if not agrees then
        diverging[#diverging + 1] = { id = info.id, workflow = info.workflow, status = info.status, divergence = report }
      end
    end
  end)
  h:close()
  remove_db(copy)
  if not checked then error("workflow.testing.replay: " .. tostring(cerr), 2) end
  return diverging, n
end

---------------------------------------------------------------------------------------------
-- Timelines on failure
---------------------------------------------------------------------------------------------

-- When a spec fails, print the timeline of every instance of the envs it left open, so the
-- failure message shows what the workflow did.
local ok_busted, busted = pcall(require, "busted")
if ok_busted and type(busted) == "table" and busted.subscribe then
  local function show_timelines()
    for env in pairs(open_envs) do
      if env.h then
        for _, info in ipairs(env:instances()) do
          io.stderr:write("\n", env:run(info.id):timeline(), "\n")
        end
      end
    end
    return nil, true
  end
  -- Published when the spec body fails, before after_each closes its env.
  busted.subscribe({ "failure", "it" }, show_timelines)
  busted.subscribe({ "error", "it" }, show_timelines)
end

return M

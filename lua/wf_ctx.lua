-- wf_ctx.lua: the Lua side of the host, compiled into libwfhost and run as trusted code in
-- the host's Lua state. It builds the sandbox that workflow files run in, `workflow.define`,
-- and the `ctx` object each instance receives.
--
-- Protocol with the C resume driver (host/wf_step.c): every command a workflow issues
-- (action, wait, sleep, now, random, uuid) is a coroutine.yield(kind, name, arg) from
-- `command` below; the driver journals it and resumes the coroutine with a status word and
-- values. Things that are not commands (state labels, log lines, outbox messages) call `note`, a C function
-- that records them directly, so they also work where a yield could not (inside a string.gsub
-- callback, a __tostring metamethod, ...).
-- The loader passes `note`, the cjson module, and `normalize` (C, see M.decode).
local note, cjson_module, normalize = ...

local yield = coroutine.yield
local type, error, select, tostring, setmetatable, getmetatable, rawget, next, pcall =
  type, error, select, tostring, setmetatable, getmetatable, rawget, next, pcall
-- Trusted code reads metatables past their __metatable protection, and calls the string
-- functions it captured here, never methods through the string metatable that workflows share.
local rawgetmetatable = debug.getmetatable
local sformat, sgsub, smatch, sfind = string.format, string.gsub, string.match, string.find
local floor, huge, concat, sort = math.floor, math.huge, table.concat, table.sort

local M = {}

-- JSON: one cjson instance configured for the host; sparse arrays become objects instead of
-- failing. (Debian's cjson 2.1.0 decodes an empty array as an empty table, which encodes as {}.)
local json = cjson_module.new()
json.encode_sparse_array(true)
json.encode_invalid_numbers(false)
json.decode_invalid_numbers(false) -- NaN, Infinity and hex are not JSON
json.encode_max_depth(128)
json.decode_max_depth(128)
M.null = json.null
function M.encode(v) return json.encode(v) end

-- cjson 2.1 decodes every number as a float; whole numbers become integers, so that an id
-- of 7 prints as 7, not 7.0. A null field of an object is dropped (Lua has no absent-but-
-- present value); a null inside an array stays json.null, so the array keeps its length.
-- normalize(v, null) does that in place (C: host/wf_lua.c).
local mtype, null = math.type, json.null

function M.decode(s) return normalize(json.decode(s), null) end

---------------------------------------------------------------------------------------------
-- Durations: a number of seconds, or a string of number+unit groups ("250ms", "1h30m").
---------------------------------------------------------------------------------------------
local units = { ms = 1, s = 1000, m = 60000, h = 3600000, d = 86400000 }

-- Called from a ctx method called by the workflow: level 4 is the workflow's line.
local function bad_duration(d)
  error(sformat("invalid duration %q: use a number of seconds or a string like \"250ms\", \"10s\", " ..
    "\"5m\", \"72h\", \"7d\"", type(d) == "string" and d or type(d)), 4)
end

-- Returns the duration in whole milliseconds.
function M.duration_ms(d)
  if type(d) == "number" then
    if d ~= d or d < 0 or d == huge then bad_duration(d) end
    return floor(d * 1000 + 0.5)
  end
  if type(d) ~= "string" then bad_duration(d) end
  local s = sgsub(d, "%s+", "")
  if s == "" then bad_duration(d) end
  local total, pos = 0, 1
  while pos <= #s do
    local num, unit, nextpos = smatch(s, "^(%d+%.?%d*)(%a+)()", pos)
    if not num or not units[unit] then bad_duration(d) end
    total = total + tonumber(num) * units[unit]
    pos = nextpos
  end
  return floor(total + 0.5)
end

---------------------------------------------------------------------------------------------
-- Action policies, as a workflow passes them per call and the test kit at registration:
-- checked here (names, types, durations) and handed to C with durations in ms. C checks the
-- values (wf_policy.c). Errors are plain strings, without a position: callers add their own.
---------------------------------------------------------------------------------------------
local retry_spec = {
  max_attempts = "count", backoff = { exponential = true, constant = true, linear = true },
  initial_delay = "duration", multiplier = "number", max_delay = "duration",
  jitter = { full = true, equal = true, none = true }, non_retryable = "types",
  attempt_timeout = "duration", total_timeout = "duration", on_exhausted = { raise = true, suspend = true },
}
local breaker_spec = {
  enabled = "boolean", failure_ratio = "number", min_throughput = "count", sampling_duration = "duration",
  break_duration = "duration", half_open_max_calls = "count", key = "string", max_keys = "count",
}

local function known(spec)
  local names = {}
  for k in next, spec do names[#names + 1] = k end
  sort(names)
  return concat(names, ", ")
end

local function norm(t, spec, what)
  if type(t) ~= "table" then error(sformat("%s must be a table", what), 0) end
  local out = {}
  for k, v in next, t do
    local kind = spec[k]
    if kind == nil then
      error(sformat("%s: unknown option %s (known: %s)", what, sformat("%q", tostring(k)), known(spec)), 0)
    end
    local bad
    if kind == "duration" then
      local ok, ms = pcall(M.duration_ms, v)
      if ok then out[k .. "_ms"] = ms else bad = "a duration (seconds, or a string like \"500ms\", \"10s\")" end
    elseif kind == "count" then
      if math.type(v) == "integer" and v >= 0 then out[k] = v else bad = "a whole number >= 0" end
    elseif kind == "number" then
      if type(v) == "number" and v == v then out[k] = v else bad = "a number" end
    elseif kind == "boolean" then
      if type(v) == "boolean" then out[k] = v else bad = "true or false" end
    elseif kind == "string" then
      if type(v) == "string" and v ~= "" then out[k] = v else bad = "a non-empty string" end
    elseif kind == "types" then
      if type(v) ~= "table" then bad = "a list of error types" else
        local list = {}
        for i = 1, #v do
          if type(v[i]) ~= "string" or v[i] == "" then bad = "a list of error types (strings)" break end
          list[i] = v[i]
        end
        out[k] = list
      end
    elseif not kind[v] then
      bad = "one of " .. known(kind)
    else
      out[k] = v
    end
    if bad then error(sformat("%s.%s must be %s, got %s", what, k, bad, type(v) == "string" and sformat("%q", v) or tostring(v)), 0) end
  end
  return out
end

-- Per-call options: { retry = {...}, timeout = <attempt timeout>, key = <idempotency key> }.
function M.normalize_call_opts(o)
  local out = {}
  for k, v in next, o do
    if k == "retry" then out.retry = norm(v, retry_spec, "retry")
    elseif k == "timeout" then
      local ok, ms = pcall(M.duration_ms, v)
      if not ok then error("timeout must be a duration (seconds, or a string like \"5s\")", 0) end
      out.timeout_ms = ms
    elseif k == "key" then
      if type(v) ~= "string" or v == "" or #v > 512 then error("key must be a non-empty string of at most 512 bytes", 0) end
      out.key = v
    else
      error(sformat("unknown option %q (known: key, retry, timeout)", tostring(k)), 0)
    end
  end
  return out
end

-- A registration policy: { retry = {...}, breaker = {...}, at_most_once = bool }.
function M.normalize_policy(p)
  local out = {}
  for k, v in next, p do
    if k == "retry" then out.retry = norm(v, retry_spec, "retry")
    elseif k == "breaker" then
      if v == false then out.breaker = { enabled = false } else out.breaker = norm(v, breaker_spec, "breaker") end
    elseif k == "at_most_once" then
      if type(v) ~= "boolean" then error(k .. " must be true or false", 0) end
      out[k] = v
    else
      error(sformat("unknown policy option %q (known: at_most_once, breaker, retry)", tostring(k)), 0)
    end
  end
  return out
end

---------------------------------------------------------------------------------------------
-- Errors raised into workflow code. Structured: code, message, retryable, plus extra fields.
---------------------------------------------------------------------------------------------
local error_methods = {}
local Error = { __index = error_methods, __metatable = false }
Error.__tostring = function(e)
  if e.action then
    return sformat("action '%s' failed: %s: %s", e.action, tostring(e.code), tostring(e.message))
  end
  return sformat("%s: %s", tostring(e.code), tostring(e.message))
end
M.Error = Error

local function new_error(t) return setmetatable(t, Error) end

-- The error raised at a workflow's yield point when its instance is cancelled.
function M.cancelled_error()
  return new_error { code = "cancelled", message = "the instance was cancelled", retryable = false }
end

-- A readable one-line description of any error value (used by the C driver). It runs no
-- workflow code (no __tostring, no __index): that runs outside any budget.
local function plain(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" or t == "boolean" then return tostring(v) end
  return nil
end

function M.describe_error(e)
  local t = type(e)
  if t == "string" then return e end
  if t == "number" then return tostring(e) end
  if t == "table" then
    local code, message = plain(rawget(e, "code")), plain(rawget(e, "message"))
    if message then
      local action = rawgetmetatable(e) == Error and plain(rawget(e, "action"))
      if action then return sformat("action '%s' failed: %s: %s", action, code or "error", message) end
      return code and sformat("%s: %s", code, message) or message
    end
  end
  return sformat("(error object is a %s value)", t)
end

-- The error code of an error value, or nil.
function M.error_code(e)
  if type(e) == "table" then return rawget(e, "code") end
  return nil
end

---------------------------------------------------------------------------------------------
-- Commands and threads: the only place that yields to the C driver.
--
-- An instance runs in one coroutine, its main thread; ctx:all and ctx:any add branch threads
-- (Lua coroutines resumed by the scheduler below, which runs in the main thread: only it can
-- yield to C). The yields to C:
--   yield(kind, name, arg, opts)           issue a command and block until an outcome:
--                                          (issued seq, delivered seq, status, values...)
--   yield(kind, name, arg, opts, "issue")  issue without blocking: ("pending", seq)
--   yield("block")                         the next outcome: (seq, status, values...)
--   yield("withdraw", seq)                 a cancelled branch no longer waits for seq
-- Commands that answer at once (now, random, uuid, and errors at issue) resume with
-- (status, values...) instead. C delivers outcomes in the order it journals them, and replay
-- delivers them in the same order, so branches interleave exactly as they did the first time.
-- Seq 0 with status "cancelled" is the instance's cancellation.
---------------------------------------------------------------------------------------------
local decode = M.decode
local running, cocreate, coresume, costatus = coroutine.running, coroutine.create, coroutine.resume, coroutine.status
local unpack, pack = table.unpack, table.pack

-- The error raised where a cancelled thread waits, and by ctx:complete to unwind.
local Complete = { __metatable = false }

-- thread (coroutine) -> its record: { S = instance scheduler, scope, main, shield = depth,
-- wait = seq waited on, joining = scope, resume = packed values to resume with, done, ok,
-- value, cancel = a cancellation not yet raised in it }
--
-- Cancellation (of the instance, or of a branch by ctx:all / ctx:any) is raised once in each
-- thread it reaches: where the thread waits, or at its next command if it is running or
-- shielded (ctx:shield). A thread may catch it and go on, to clean up.
local threads = setmetatable({}, { __mode = "k" })

local function check_cancel(T)
  if T.cancel and T.shield == 0 then
    T.cancel = nil
    error(M.cancelled_error(), 0)
  end
end

-- Turns a delivered (status, values...) into what the command returns or raises.
local function outcome(name, st, a, b)
  if st == "value" then return a end
  if st == "json" then
    local ok, v = pcall(decode, a)
    if not ok then
      error(new_error { code = "bad_result", message = "the action returned malformed JSON: " ..
        tostring(v):gsub("^.-:%d+: ", ""), retryable = false, action = name }, 0)
    end
    return v
  end
  if st == "event" then
    local e = decode(b) -- { at = arrival time in ms, data = payload }
    return { name = a, data = e.data, at = e.at / 1000 }
  end
  if st == "timeout" then return nil, "timeout" end
  if st == "fired" then return end
  if st == "error" then
    local e = decode(a)
    e.action = name
    error(new_error(e), 0)
  end
  if st == "child" then -- a child workflow ended: a = its id, b = {status, output | error}
    local e = decode(b)
    if e.status == "completed" then return e.output end
    local first = type(e.error) == "string" and smatch(e.error, "^[^\n]*") or tostring(e.error)
    error(new_error { code = e.status == "cancelled" and "child_cancelled" or "child_failed",
      message = sformat("child workflow '%s' (%s) %s: %s", tostring(name), a, e.status, first),
      retryable = false, child = a, workflow = name, detail = e.error }, 0)
  end
  if st == "cancelled" then error(M.cancelled_error(), 0) end
  if st == "raise" then error(a, 4) end
  error("wfhost: unexpected resume status " .. tostring(st))
end

-- The traceback part ("\nstack traceback:\n...") of where an error ended the coroutine co.
local function frames(co)
  local tb = debug.traceback(co, "", 0)
  local at = sfind(tb, "\nstack traceback:", 1, true)
  return at and tb:sub(at) or ""
end

local Sched = {}
Sched.__index = Sched

local function new_scope(parent) return { parent = parent, threads = {}, open = 0 } end

local function new_sched()
  local S = setmetatable({ waiting = {}, runq = {}, qhead = 1, qtail = 0, nthreads = 0, saga = {},
    mailbox = {}, nhandles = 0 }, Sched)
  S.root = new_scope(nil)
  return S
end

-- Makes T runnable with values to resume it with: a branch joins the run queue; the main
-- thread, which runs the queue, sees them when its turn comes back.
function Sched:wake(T, ...)
  T.resume = pack(...)
  if T.main then return end
  self.qtail = self.qtail + 1
  self.runq[self.qtail] = T
end

-- Cancels every thread of a scope and of the scopes inside it. A thread waiting for a
-- command gives the command up (unless shielded) and wakes with the cancellation.
function Sched:cancel_scope(sc)
  if sc.cancelled then return end
  sc.cancelled = true
  for i = 1, #sc.threads do
    local T = sc.threads[i]
    if not T.done then self:cancel_thread(T) end
  end
end

function Sched:cancel_thread(T)
  if T.joining then self:cancel_scope(T.joining) end
  if T.wait and T.shield == 0 then
    local seq = T.wait
    self.waiting[seq], T.wait = nil, nil
    yield("withdraw", seq)
    self:wake(T, "cancelled")
  else
    T.cancel = true
  end
end

-- Hands an outcome from C to the thread waiting for it.
function Sched:route(seq, ...)
  if seq == 0 then return self:cancel_scope(self.root) end
  local T = self.waiting[seq]
  if not T then -- a child's outcome before its handle asks for it, or withdrawn in the same step
    if self.mailbox[seq] == false then self.mailbox[seq] = pack(...) end
    return
  end
  self.waiting[seq], T.wait = nil, nil
  self:wake(T, ...)
end

-- A thread finished: its scope may be complete now.
function Sched:finished(T, ok, value)
  T.done, T.ok, T.value = true, ok, value
  self.nthreads = self.nthreads - 1
  local sc = T.scope
  sc.open = sc.open - 1
  if sc.on_done then sc.on_done(T) end
  local owner = sc.owner
  if owner and owner.joining == sc and sc.settled and sc.open == 0 then
    owner.joining = nil
    self:wake(owner, "joined")
  end
end

-- Resumes a branch thread until it waits (for a command or a join) or ends. Commands it
-- issues go to C through this (main) thread at once.
function Sched:step(T)
  local args = T.resume
  T.resume = nil
  note(nil, "arm", T.co)
  local r = pack(coresume(T.co, unpack(args, 1, args.n)))
  while true do
    if costatus(T.co) == "dead" then
      local err = r[2]
      if not r[1] and (type(err) == "table" or type(err) == "string") then
        -- Where it was raised, for the instance's error if ctx:all / ctx:any passes it on.
        local tb = self.branch_tb or setmetatable({}, { __mode = "k" })
        self.branch_tb = tb
        tb[err] = tb[err] or frames(T.co)
      end
      self:finished(T, r[1], err)
      return
    end
    local req = r[2]
    if req == "issue" then
      r = pack(coresume(T.co, yield(r[3], r[4], r[5], r[6], "issue")))
    elseif req == "withdraw" then
      yield("withdraw", r[3])
      r = pack(coresume(T.co))
    else -- "wait" or "join": parked until route() or finished() makes it ready
      return
    end
  end
end

-- Runs the instance's threads from the main thread until T (the main one) can go on.
function Sched:run_main(T)
  while T.resume == nil do
    local q = self.runq
    local B = q[self.qhead]
    if B then
      q[self.qhead] = nil
      self.qhead = self.qhead + 1
      self:step(B)
    else
      self.runq, self.qhead, self.qtail = {}, 1, 0
      self:route(yield("block"))
    end
  end
  local args = T.resume
  T.resume = nil
  return unpack(args, 1, args.n)
end

-- Waits in thread T for the command issued at seq; returns (status, values...).
function Sched:await(T, seq)
  T.wait = seq
  self.waiting[seq] = T
  if T.main then return self:run_main(T) end
  return yield("wait")
end

-- An instance's main thread gets its scheduler when it first needs one (branches, a saga,
-- ctx:complete): a workflow that runs one thing at a time never pays for it.
local MainThread = { __index = function(T, k)
  if k == "S" or k == "scope" then
    local S = new_sched()
    rawset(T, "S", S)
    rawset(T, "scope", S.root)
    S.root.threads[1] = T
    return rawget(T, k)
  end
end }

local function thread_of()
  local co, is_main = running()
  local T = threads[co]
  if T == nil then -- the main thread of an instance: its record is made on its first command
    if is_main then return nil end
    T = setmetatable({ main = true, shield = 0, co = co }, MainThread)
    threads[co] = T
  end
  return T
end

-- The workflow calls a ctx method, which calls `command`.
local function command(kind, name, arg, opts)
  local T = thread_of()
  if T == nil then error("ctx commands can only be used while a workflow runs", 3) end
  local S = rawget(T, "S")
  if S and S.complete then error(S.complete, 0) end
  if rawget(T, "cancel") then check_cancel(T) end
  if T.main and (S == nil or (S.nthreads == 0 and S.nhandles == 0)) then -- the common case: one round trip
    local issued, seq, st, a, b = yield(kind, name, arg, opts)
    if mtype(issued) ~= "integer" then
      local v, why = outcome(name, issued, seq, st) -- not tail calls: a raise names the workflow's line
      return v, why
    end
    if seq == 0 then -- the instance is cancelled while it waits
      if T.shield > 0 then
        T.cancel = true
        st, a, b = T.S:await(T, issued)
      else
        yield("withdraw", issued)
        st = "cancelled"
      end
    end
    local v, why = outcome(name, st, a, b)
    return v, why
  end
  local st, a, b
  if T.main then
    st, a, b = yield(kind, name, arg, opts, "issue")
  else
    st, a, b = yield("issue", kind, name, arg, opts)
  end
  if st ~= "pending" then
    local v, why = outcome(name, st, a, b)
    return v, why
  end
  local v, why = outcome(name, S:await(T, a))
  return v, why
end

local function check_name(what, s, level)
  if type(s) ~= "string" or s == "" or #s > 128 or sfind(s, "[|%c]") then
    error(sformat("%s must be a non-empty string of at most 128 bytes without '|' or control " ..
      "characters, got %s", what, type(s) == "string" and sformat("%q", s) or type(s)), level + 1)
  end
end

---------------------------------------------------------------------------------------------
-- ctx
---------------------------------------------------------------------------------------------
-- Metatables shared by every instance are protected: one instance must not be able to
-- change what ctx does for the others.
local Ctx = {} -- the methods; instances see them through ctx_mt, never the table itself
local ctx_mt = { __index = Ctx, __metatable = false }

-- ctx.actions.NAME is a raw lookup in `cache` (the proxy's __index is that table, not a
-- function): a name seen before costs no call. The first use of a name runs cache's own
-- __index, which checks it and makes its function. The proxy itself stays empty, so that
-- what a workflow can see of it (rawget, next) does not depend on what other instances
-- called or when the collector ran.
local function actions_proxy()
  local cache = setmetatable({}, { -- shared by every instance: must not grow
    __mode = "v",
    __index = function(cache, name)
      if type(name) ~= "string" then return nil end
      if #name > 128 or not smatch(name, "^[%w_%.]+$") then
        error(sformat("ctx.actions: bad action name %q (letters, digits, '_' and '.', at most 128)",
          #name > 40 and string.sub(name, 1, 40) .. "..." or name), 2)
      end
      local function f(params, opts)
        if opts ~= nil then
          if type(opts) ~= "table" then error(sformat("ctx.actions.%s(params, opts): opts must be a table", name), 2) end
          local ok, o = pcall(M.normalize_call_opts, opts)
          if not ok then error(sformat("ctx.actions.%s(params, opts): %s", name, tostring(o)), 2) end
          opts = o
        end
        local ok, payload = pcall(json.encode, params == nil and json.null or params)
        if not ok then
          error(sformat("params of action '%s' cannot be stored as JSON: %s", name, payload), 2)
        end
        local result = command("action", name, payload, opts) -- not a tail call: errors need this frame
        return result
      end
      rawset(cache, name, f)
      return f
    end,
  })
  return setmetatable({}, {
    __index = cache,
    __newindex = function() error("ctx.actions is read-only", 2) end,
    __metatable = false,
  })
end

local Log = {}
local log_mt = { __index = Log, __newindex = function() error("ctx.log is read-only", 2) end,
                 __metatable = false }
for _, level in ipairs { "debug", "info", "warn", "error" } do
  Log[level] = function(_, msg, fields)
    local fjson
    if fields ~= nil then
      local ok, s = pcall(json.encode, fields)
      fjson = ok and s or json.encode { unencodable = tostring(s) }
    end
    note(nil, "log", level, tostring(msg), fjson)
  end
end

-- ctx.actions and ctx.log act on the instance whose coroutine is running (command yields
-- from it; note records for it), so every instance shares the same two.
local shared_actions = actions_proxy()
local shared_log = setmetatable({}, log_mt)

-- Creates the ctx of one instance.
function M.new_ctx(id, workflow, version)
  return setmetatable({
    id = id, workflow = workflow, version = version,
    data = {}, actions = shared_actions, log = shared_log, _state = nil,
  }, ctx_mt)
end

function Ctx:wait_for(names, opts)
  if type(names) == "string" then names = { names } end
  if type(names) ~= "table" or #names == 0 then
    error("ctx:wait_for(names, opts): names must be an event name or a non-empty list of names", 2)
  end
  for i = 1, #names do check_name("event name", names[i], 2) end
  local timeout
  if opts ~= nil then
    if type(opts) ~= "table" then error("ctx:wait_for(names, opts): opts must be a table", 2) end
    if opts.timeout ~= nil then timeout = M.duration_ms(opts.timeout) end
  end
  return command("wait", concat(names, "|"), timeout)
end

function Ctx:sleep(d)
  return command("sleep", nil, M.duration_ms(d))
end

-- Seconds since the epoch (with millisecond precision), recorded on first execution.
function Ctx:now()
  return command("now") / 1000
end

-- As math.random, from a recorded draw: () in [0,1), (m) in 1..m, (m, n) in m..n.
function Ctx:random(m, n)
  if m ~= nil and (type(m) ~= "number" or m ~= floor(m)) then
    error("ctx:random(m, n): bounds must be integers", 2)
  end
  if n ~= nil and (type(n) ~= "number" or n ~= floor(n)) then
    error("ctx:random(m, n): bounds must be integers", 2)
  end
  if m ~= nil and n == nil then m, n = 1, m end
  if m ~= nil and m > n then error("ctx:random(m, n): interval is empty", 2) end
  local u = command("random")
  if m == nil then return u end
  return m + floor(u * (n - m + 1))
end

function Ctx:uuid()
  return command("uuid")
end

function Ctx:set_state(label)
  if label ~= nil then check_name("state label", label, 2) end
  self._state = label
  note(nil, "state", label)
end

function Ctx:state()
  return self._state
end

-- ctx:patched(change_id): true where this instance runs the new code of a change, false where
-- it replays history written by the code before it (wf_patch.c). The first answer for an id
-- holds for the rest of the run, so an id guards every place of one change alike. The memo is
-- keyed by ctx, out of the workflow's reach; a rebuilt instance has a new ctx and asks again.
local patch_memo = setmetatable({}, { __mode = "k" })

function Ctx:patched(change_id)
  if type(change_id) ~= "string" or change_id == "" or #change_id > 128 or sfind(change_id, "%c") then
    error(sformat("ctx:patched(change_id): the change id must be a non-empty string of at most 128 bytes " ..
      "without control characters, got %s", type(change_id) == "string" and sformat("%q", change_id)
      or type(change_id)), 2)
  end
  local memo = patch_memo[self]
  if not memo then
    memo = {}
    patch_memo[self] = memo
  end
  local use = memo[change_id]
  if use == nil then
    use = note(nil, "patched", change_id)
    memo[change_id] = use
  end
  return use
end

-- ctx:progress(percent, message): how far the instance's work has come (0 to 100), with an
-- optional message, for `wfhost show` and `wfhost list` (wf_progress.c).
function Ctx:progress(percent, message)
  if type(percent) ~= "number" or percent ~= percent or percent < 0 or percent > 100 then
    error(sformat("ctx:progress(percent, message): percent must be a number from 0 to 100, got %s",
      type(percent) == "number" and tostring(percent) or type(percent)), 2)
  end
  if message ~= nil and (type(message) ~= "string" or #message > 256) then
    error(sformat("ctx:progress(percent, message): message must be a string of at most 256 bytes, got %s",
      type(message) == "string" and (#message .. " bytes") or type(message)), 2)
  end
  note(nil, "progress", percent, message)
end

---------------------------------------------------------------------------------------------
-- Branches: ctx:all, ctx:any
---------------------------------------------------------------------------------------------

-- Starts one branch thread per function in a new scope under T's.
local function spawn(T, fns)
  local S = T.S
  local sc = new_scope(T.scope)
  sc.owner = T
  for i = 1, #fns do
    local f = fns[i]
    local co = cocreate(function() return f() end)
    local B = { S = S, scope = sc, shield = 0, co = co, index = i }
    threads[co] = B
    sc.threads[i] = B
    sc.open = sc.open + 1
    S.nthreads = S.nthreads + 1
    S:wake(B)
  end
  return sc
end

local function check_fns(fns, what)
  if type(fns) ~= "table" then error(sformat("%s expects a list of functions", what), 3) end
  for i = 1, #fns do
    if type(fns[i]) ~= "function" then
      error(sformat("%s: branch %d is a %s, not a function", what, i, type(fns[i])), 3)
    end
  end
end

-- Waits in T until the scope settles (the condition set by the caller) and every thread in it
-- has ended; a cancellation of T meanwhile cancels the scope.
local function join(T, sc)
  local S = T.S
  if sc.open == 0 then return end
  T.joining = sc
  if T.main then S:run_main(T) else yield("join") end
  T.joining = nil
end

function Ctx:all(fns)
  check_fns(fns, "ctx:all")
  local n = #fns
  if n == 0 then return end
  local T = thread_of()
  if T.S.complete then error(T.S.complete, 0) end
  check_cancel(T)
  local sc = spawn(T, fns)
  local failed
  sc.settled = true
  sc.on_done = function(B)
    if not B.ok and not failed then
      failed = B
      T.S:cancel_scope(sc)
    end
  end
  join(T, sc)
  check_cancel(T)
  if failed then error(failed.value, 0) end
  local out = {}
  for i = 1, n do out[i] = sc.threads[i].value end
  return unpack(out, 1, n)
end

function Ctx:any(fns, opts)
  check_fns(fns, "ctx:any")
  local want, cancel = 1, true
  if opts ~= nil then
    if type(opts) ~= "table" then error("ctx:any(fns, opts): opts must be a table", 2) end
    if opts.n ~= nil then want = opts.n end
    if opts.cancel ~= nil then cancel = opts.cancel end
    if mtype(want) ~= "integer" or want < 1 then error("ctx:any(fns, opts): n must be a whole number >= 1", 2) end
    if type(cancel) ~= "boolean" then error("ctx:any(fns, opts): cancel must be true or false", 2) end
  end
  local n = #fns
  if want > n then
    error(sformat("ctx:any: n = %d but there are only %d branches", want, n), 2)
  end
  local T = thread_of()
  local S = T.S
  if S.complete then error(S.complete, 0) end
  check_cancel(T)
  local sc = spawn(T, fns)
  local winners, failures, nfail = {}, {}, 0
  local function settle()
    sc.settled = true
    if cancel then S:cancel_scope(sc)
    else -- the others run on in the background; the join waits for no one
      sc.open = 0
    end
  end
  sc.on_done = function(B)
    if sc.settled then return end
    if not B.ok and S.complete and rawequal(B.value, S.complete) then -- ctx:complete, continue_as_new
      sc.settled = true
      S:cancel_scope(sc)
      return
    end
    if B.ok then
      winners[#winners + 1] = { index = B.index, result = B.value }
      if #winners == want then settle() end
    else
      nfail = nfail + 1
      failures[#failures + 1] = B
      if n - nfail < want then settle() end
    end
  end
  if cancel then join(T, sc) else
    if not sc.settled then join(T, sc) end
  end
  if S.complete then error(S.complete, 0) end
  check_cancel(T)
  if #winners < want then
    local last = failures[#failures]
    local e = new_error { code = "any_failed", retryable = false,
      message = sformat("ctx:any needed %d branch%s to succeed, %d failed: %s", want, want == 1 and "" or "es",
        nfail, M.describe_error(last and last.value)) }
    e.errors = {}
    for i = 1, #failures do e.errors[i] = { index = failures[i].index, error = failures[i].value } end
    error(e, 0)
  end
  if want == 1 then return winners[1].index, winners[1].result end
  return winners
end

-- Runs fn so that a cancellation does not interrupt it: commands inside wait for their outcome
-- even when the instance or the branch is cancelled. A pending cancellation is raised after.
function Ctx:shield(fn)
  if type(fn) ~= "function" then error("ctx:shield(fn): fn must be a function", 2) end
  local T = thread_of()
  T.shield = T.shield + 1
  local r = pack(pcall(fn))
  T.shield = T.shield - 1
  if not r[1] then error(r[2], 0) end
  check_cancel(T)
  return unpack(r, 2, r.n)
end

---------------------------------------------------------------------------------------------
-- Child workflows
---------------------------------------------------------------------------------------------
local child_opts = { id = "string", detached = "boolean" }

-- Checks ctx:child / ctx:start_child arguments; returns the input as JSON and the options.
local function child_args(what, workflow, input, opts)
  if type(workflow) ~= "string" or not smatch(workflow, "^[%w_%.%-]+$") or #workflow > 128 then
    error(sformat("%s(workflow, input, opts): workflow must be a workflow name, got %s", what,
      type(workflow) == "string" and sformat("%q", workflow) or type(workflow)), 3)
  end
  local ok, s = pcall(json.encode, input == nil and json.null or input)
  if not ok then error(sformat("%s(\"%s\", input): the input cannot be stored as JSON: %s", what, workflow, s), 3) end
  if opts ~= nil then
    if type(opts) ~= "table" then error(sformat("%s(workflow, input, opts): opts must be a table", what), 3) end
    for k, v in next, opts do
      if child_opts[k] == nil then
        error(sformat("%s: unknown option '%s' (id, detached)", what, tostring(k)), 3)
      elseif type(v) ~= child_opts[k] then
        error(sformat("%s: opts.%s must be a %s, got %s", what, k, child_opts[k], type(v)), 3)
      end
    end
  end
  return s, opts
end

-- Starts a child workflow and waits for its result: its output, or an error child_failed /
-- child_cancelled. The child is cancelled if this thread is (unless detached).
function Ctx:child(workflow, input, opts)
  local s, o = child_args("ctx:child", workflow, input, opts)
  local out = command("child", workflow, s, o) -- not a tail call: errors need this frame
  return out
end

local ChildHandle = {}
ChildHandle.__index = ChildHandle
ChildHandle.__metatable = false

-- Starts a child workflow and returns its handle at once: handle.id, handle:result(),
-- handle:signal(event, data), handle:cancel().
function Ctx:start_child(workflow, input, opts)
  local s, o = child_args("ctx:start_child", workflow, input, opts)
  local T = thread_of()
  if T == nil then error("ctx commands can only be used while a workflow runs", 2) end
  local S = T.S
  if S.complete then error(S.complete, 0) end
  if rawget(T, "cancel") then check_cancel(T) end
  local st, seq, id
  if T.main then st, seq, id = yield("child", workflow, s, o, "issue")
  else st, seq, id = yield("issue", "child", workflow, s, o) end
  if st == "raise" then error((sgsub(seq, "^ctx:child%(", "ctx:start_child(")), 2) end
  if st ~= "pending" then outcome(workflow, st, seq, id) end -- raises
  S.mailbox[seq] = false
  S.nhandles = S.nhandles + 1
  return setmetatable({ id = id, workflow = workflow, _seq = seq, _S = S }, ChildHandle)
end

-- Waits for the child's end: its output, or raises child_failed / child_cancelled. Asked
-- again, it answers the same.
function ChildHandle:result()
  local r = rawget(self, "_r")
  if not r then
    local T = thread_of()
    if T == nil then error("handle:result() can only be used while a workflow runs", 2) end
    local S = self._S
    if S.complete then error(S.complete, 0) end
    if rawget(T, "cancel") then check_cancel(T) end
    local seq = self._seq
    local got = S.mailbox[seq]
    if not got and S.waiting[seq] then -- another thread waits for it already: wait for that one
      local ws = rawget(self, "_waiters") or {}
      self._waiters = ws
      ws[#ws + 1] = T
      if T.main then S:run_main(T) else yield("wait") end
      check_cancel(T)
      r = self._r
    else
      if not got then got = pack(S:await(T, seq)) end
      S.mailbox[seq] = nil
      S.nhandles = S.nhandles - 1
      r = pack(pcall(outcome, self.workflow, got[1], got[2], got[3]))
      if got[1] == "cancelled" then -- this thread was cancelled while it waited: the child is let go
        r = pack(false, M.cancelled_error())
      end
      self._r = r
      local ws = rawget(self, "_waiters")
      if ws then
        self._waiters = nil
        for i = 1, #ws do S:wake(ws[i], "joined") end
      end
    end
  end
  if not r[1] then error(r[2], 0) end
  return r[2]
end

-- Sends the child an event, as `wfhost signal` would; false if the child has ended.
function ChildHandle:signal(event, data)
  check_name("handle:signal(event, data): the event name", event, 2)
  local ok, s = pcall(json.encode, data == nil and json.null or data)
  if not ok then error("handle:signal(event, data): the data cannot be stored as JSON: " .. s, 2) end
  local sent = command("signal_child", self.id, s, { event = event })
  return sent
end

-- Asks the child to cancel; false if it has ended. Its result() then raises child_cancelled
-- (unless the child finished first).
function ChildHandle:cancel()
  local sent = command("cancel_child", self.id)
  return sent
end

-- Ends this run and starts the next from scratch under the same instance id, with input and
-- a fresh history: a workflow that loops forever keeps a bounded history. Branches still
-- running are cancelled, attached children too; no compensation runs.
function Ctx:continue_as_new(input)
  local ok, s = pcall(json.encode, input == nil and json.null or input)
  if not ok then error("ctx:continue_as_new(input): the input cannot be stored as JSON: " .. s, 2) end
  local T = thread_of()
  if T == nil then error("ctx:continue_as_new can only be used while a workflow runs", 2) end
  T.S.complete = setmetatable({ continue = s }, Complete)
  error(T.S.complete, 0)
end

-- Registers a compensation: if the instance fails or is cancelled, the registered
-- compensations run in reverse order (shielded) before it ends.
function Ctx:compensate(fn)
  if type(fn) ~= "function" then error("ctx:compensate(fn): fn must be a function", 2) end
  local T = thread_of()
  local saga = T.S.saga
  saga[#saga + 1] = fn
end

-- Ends the instance successfully with value, at once: branches still running are cancelled,
-- and no compensation runs.
function Ctx:complete(value)
  local T = thread_of()
  T.S.complete = setmetatable({ value = value == nil and json.null or value }, Complete)
  error(T.S.complete, 0)
end

-- Writes a message to the outbox in the step's transaction; subscribers get it once that is
-- committed. Returns the message id ("<instance id>:<seq>:<n>"), the same on every replay.
function Ctx:emit(topic, payload)
  local ok, s = pcall(json.encode, payload == nil and json.null or payload)
  if not ok then
    error(sformat("ctx:emit(%s, payload): the payload cannot be stored as JSON: %s",
      type(topic) == "string" and sformat("%q", topic) or "topic", s), 2)
  end
  local id, err = note(nil, "emit", topic, s)
  if not id then error(err or "ctx:emit: no instance is running", 2) end
  return id
end

---------------------------------------------------------------------------------------------
-- workflow.define
---------------------------------------------------------------------------------------------
local Definition = { __metatable = false }

-- A definition's schedule: a cron string, or { cron, timezone, catch_up, overlap, input }.
-- Returns it normalized (input as JSON text), or raises a message without a position.
local schedule_opts = { cron = true, timezone = true, catch_up = true, overlap = true, input = true }
local function normalize_schedule(s)
  if type(s) == "string" then s = { cron = s } end
  if type(s) ~= "table" then
    error("schedule must be a cron expression (\"*/15 * * * *\") or a table { cron = ..., timezone = ..., " ..
      "catch_up = ..., overlap = ..., input = ... }", 0)
  end
  for k in next, s do
    if not schedule_opts[k] then
      error(sformat("schedule: unknown option %q (known: %s)", tostring(k), known(schedule_opts)), 0)
    end
  end
  if type(s.cron) ~= "string" then error("schedule.cron must be a cron expression, like \"*/15 * * * *\"", 0) end
  if s.timezone ~= nil and type(s.timezone) ~= "string" then
    error("schedule.timezone must be an IANA zone name, like \"Europe/Berlin\"", 0)
  end
  local problem = M.schedule_check(s.cron, s.timezone)
  if problem then error("schedule: " .. problem, 0) end
  local catch_up, overlap = s.catch_up or "skip", s.overlap or "skip"
  if catch_up ~= "skip" and catch_up ~= "once" then
    error(sformat("schedule.catch_up must be \"skip\" or \"once\", got %s", tostring(catch_up)), 0)
  end
  if overlap ~= "skip" and overlap ~= "allow" then
    error(sformat("schedule.overlap must be \"skip\" or \"allow\", got %s", tostring(overlap)), 0)
  end
  local input = s.input or {}
  if type(input) ~= "table" then error("schedule.input must be a table (the input of each instance)", 0) end
  if rawget(input, "schedule") ~= nil then
    error("schedule.input: the field \"schedule\" is reserved: each instance gets the firing there", 0)
  end
  local ok, text = pcall(json.encode, input)
  if not ok then error("schedule.input cannot be stored as JSON: " .. text, 0) end
  if text:sub(1, 1) ~= "{" then error("schedule.input must be a table of named fields (a JSON object)", 0) end
  return { cron = s.cron, timezone = s.timezone, catch_up = catch_up, overlap = overlap, input = text }
end

-- JSON helpers for the host: does the object text s have a top-level field key (even null)?
function M.object_has(s, key)
  local ok, v = pcall(json.decode, s)
  return ok and type(v) == "table" and v[key] ~= nil
end

function M.define(spec)
  if type(spec) ~= "table" then error("workflow.define expects a table { name, version, run }", 2) end
  local name, version, run = spec.name, spec.version or 1, spec.run
  if type(name) ~= "string" or not smatch(name, "^[%w_%.%-]+$") or #name > 128 then
    error("workflow.define: name must be a string of letters, digits, '_', '.' or '-'", 2)
  end
  if math.type(version) ~= "integer" or version < 1 then
    error("workflow.define: version must be a positive integer", 2)
  end
  if type(run) ~= "function" then error("workflow.define: run must be a function(ctx, input)", 2) end
  local schedule
  if spec.schedule ~= nil then
    if #name > 100 then error("workflow.define: a workflow with a schedule needs a name of at most 100 bytes", 2) end
    local ok, s = pcall(normalize_schedule, spec.schedule)
    if not ok then error("workflow.define: " .. tostring(s), 2) end
    schedule = s
  end
  -- Where it is defined (the loader fills this in when a tail call hid the caller).
  local info = debug.getinfo(2, "Sl")
  local known = info and info.source:sub(1, 1) == "@" and info.currentline > 0
  return setmetatable({
    name = name, version = version, run = run, schedule = schedule,
    source = known and info.short_src or nil, line = known and info.currentline or nil,
  }, Definition)
end

function M.is_definition(v) return rawgetmetatable(v) == Definition end

-- The body of every instance's coroutine. Returns the output as JSON. An error ends the
-- coroutine; the C driver then asks `completion` (ctx:complete unwinding) and `saga` (the
-- compensations to run) what comes next.
function M.main(run, ctx, input_json)
  local T = thread_of()
  local out = run(ctx, decode(input_json))
  local S = rawget(T, "S")
  if S and S.complete then
    if S.complete.continue then error(S.complete, 0) end -- caught by the workflow: go on anyway
    out = S.complete.value
  end
  local ok, s = pcall(json.encode, out == nil and json.null or out)
  if not ok then
    error("the workflow returned a value that cannot be stored as JSON: " .. s, 0)
  end
  return s
end

-- ctx:complete(value) unwound the instance: its value as JSON (raises if it cannot be encoded);
-- or ctx:continue_as_new(input) did: the next run's input as JSON, and true.
function M.completion(co, err)
  local T = threads[co]
  local S = T and rawget(T, "S")
  if not (S and S.complete) then return nil end
  if S.complete.continue then return S.complete.continue, true end
  local ok, s = pcall(json.encode, S.complete.value)
  if not ok then error("ctx:complete(value): the value cannot be stored as JSON: " .. s, 0) end
  return s
end

-- Where a branch's error was raised, when ctx:all / ctx:any passed it on to co.
function M.branch_traceback(co, err)
  local T = threads[co]
  local tb = T and rawget(T, "S") and T.S.branch_tb
  return tb and (type(err) == "table" or type(err) == "string") and tb[err] or nil
end

-- The compensations of the instance whose main thread co ended with an error, as a function
-- to run in a new main thread, or nil if none were registered. It withdraws what the other
-- threads wait on, then runs the compensations in reverse order, shielded, each to its end
-- even if one fails, recording each outcome in the history.
function M.saga(co, cause)
  local T = threads[co]
  local S = T and rawget(T, "S")
  if not S or #S.saga == 0 then return nil end
  return function()
    local C = { S = S, main = true, shield = 1, scope = S.root, co = running() }
    threads[C.co] = C
    -- The other threads are left behind: what they wait on is withdrawn, in issue order.
    local seqs = {}
    for seq in next, S.waiting do seqs[#seqs + 1] = seq end
    sort(seqs)
    for i = 1, #seqs do yield("withdraw", seqs[i]) end
    S.waiting, S.runq, S.qhead, S.qtail, S.nthreads = {}, {}, 1, 0, 0
    local saga = S.saga
    S.saga = {}
    note(nil, "compensation", "begin", #saga, type(cause) == "string" and smatch(cause, "^[^\n]*") or nil)
    for i = #saga, 1, -1 do
      local ok, err = pcall(saga[i])
      note(nil, "compensation", ok and "done" or "failed", i, (not ok) and M.describe_error(err) or nil)
    end
    note(nil, "compensation", "end", #saga)
  end
end

-- ctx.data as JSON; raises a readable error if it holds something JSON cannot.
function M.encode_data(ctx)
  local data = rawget(ctx, "data")
  if type(data) ~= "table" then error("ctx.data must stay a table", 0) end
  local ok, s = pcall(json.encode, data)
  if not ok then error("ctx.data cannot be stored as JSON: " .. s, 0) end
  return s
end

---------------------------------------------------------------------------------------------
-- The sandbox
---------------------------------------------------------------------------------------------

-- Deterministic iteration: keys sorted numbers first, then strings, then booleans. Lua's own
-- order over string keys depends on a per-state hash seed, so it could differ after a
-- restart and make replay diverge. Other key types (tables, functions) follow in an order
-- that is not deterministic; the replay check catches a command that depends on it.
local rank = { number = 1, string = 2, boolean = 3 }
local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return (rank[ta] or 4) < (rank[tb] or 4) end
  if ta == "number" or ta == "string" then return a < b end
  if ta == "boolean" then return (not a) and b end
  return tostring(a) < tostring(b)
end

local function sorted_pairs(t)
  local mt = rawgetmetatable(t)
  if type(mt) == "table" and mt.__pairs then return mt.__pairs(t) end
  local keys, n = {}, 0
  for k in next, t do n = n + 1; keys[n] = k end
  sort(keys, key_less)
  local i = 0
  return function()
    i = i + 1
    local k = keys[i]
    if k ~= nil then return k, rawget(t, k) end
  end, nil, nil -- never the table itself: t may be what a read-only view hides
end
M.sorted_pairs = sorted_pairs

function M.readonly(t, what)
  return setmetatable({}, {
    __index = t,
    __newindex = function(_, k) error(sformat("%s.%s cannot be changed in workflow code", what, tostring(k)), 2) end,
    __pairs = function() return sorted_pairs(t) end,
    __len = function() return #t end,
    __metatable = false,
  })
end

-- A read-only view of a module table and of every table inside it (shared by all instances).
function M.readonly_deep(t, what)
  local views = setmetatable({}, { __mode = "k" })
  local function view(x, name)
    if type(x) ~= "table" then return x end
    local v = views[x]
    if v then return v end
    v = setmetatable({}, {
      __index = function(_, k) return view(x[k], name) end,
      __newindex = function(_, k) error(sformat("%s.%s cannot be changed: modules are shared by every instance", name, tostring(k)), 2) end,
      __pairs = function()
        local it, s, c = sorted_pairs(x)
        return function() local k, val = it(s, c); c = k; if k ~= nil then return k, view(val, name) end end, nil, nil
      end,
      __len = function() return #x end,
      __metatable = false,
    })
    views[x] = v
    return v
  end
  return view(t, what)
end

local function copy(t, drop)
  local c = {}
  for k, v in next, t do if not (drop and drop[k]) then c[k] = v end end
  return c
end

local unavailable = {
  os = "os is not available in workflows: use ctx:now() for time and ctx:sleep() to wait",
  io = "io is not available in workflows: do I/O in an action",
  debug = "debug is not available in workflows",
  package = "package is not available in workflows: use require for files in the workflows directory",
  load = "load is not available in workflows", loadfile = "loadfile is not available in workflows",
  dofile = "dofile is not available in workflows: use require",
  collectgarbage = "collectgarbage is not available in workflows",
  coroutine = "coroutine is not available in workflows: a workflow already runs as one",
  rawset = "rawset is not available in workflows",
}

local function deny_random()
  error("math.random is not deterministic under replay: use ctx:random()", 2)
end
local function deny_randomseed()
  error("math.randomseed is not available: ctx:random() is seeded and recorded by the host", 2)
end

-- setmetatable without finalizers: Lua runs __gc with hooks off, where no instruction
-- budget could stop a runaway one.
local function safe_setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed in workflows", 2)
  end
  return setmetatable(t, mt)
end

-- Builds the read-only base environment. `print` and `require` are the host's.
function M.make_base(print_fn, require_fn)
  local readonly = M.readonly
  local mathlib = copy(math)
  mathlib.random, mathlib.randomseed = deny_random, deny_randomseed
  local stringlib = copy(string, { dump = true })
  -- Methods on strings ("x"):upper() come from the string metatable: give it the copy too.
  rawgetmetatable("").__index = stringlib
  local base = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = sorted_pairs,
    pcall = pcall, xpcall = xpcall, rawequal = rawequal, rawget = rawget, rawlen = rawlen,
    select = select, setmetatable = safe_setmetatable,
    -- Strings share one metatable whose __index is the host's own string library.
    getmetatable = function(v) if type(v) == "string" then return nil end return getmetatable(v) end,
    tonumber = tonumber, tostring = tostring, type = type, _VERSION = _VERSION,
    string = readonly(stringlib, "string"),
    table = readonly(copy(table), "table"),
    math = readonly(mathlib, "math"),
    utf8 = readonly(copy(utf8), "utf8"),
    workflow = readonly({ define = M.define, sorted_pairs = sorted_pairs, null = json.null }, "workflow"),
    json = readonly({ encode = json.encode, decode = M.decode, null = json.null }, "json"),
    sorted_pairs = sorted_pairs,
    print = print_fn, require = require_fn,
  }
  return setmetatable({}, {
    __index = function(_, k)
      local v = base[k]
      if v ~= nil then return v end
      local why = unavailable[k]
      if why then error(why, 2) end
      return nil
    end,
    __newindex = function(_, k) error(sformat("cannot assign global '%s' in workflow code: use a local", tostring(k)), 2) end,
    __metatable = false,
  })
end

-- A fresh _ENV for one file: reads fall through to the base, writes raise.
function M.make_env(base)
  return setmetatable({}, {
    __index = base,
    __newindex = function(_, k) error(sformat("cannot assign global '%s' in workflow code: use a local", tostring(k)), 2) end,
    __metatable = false,
  })
end

return M

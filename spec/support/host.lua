-- A host for specs: a temporary database, the repository's workflows, Lua functions as
-- actions (each call recorded), and a virtual clock that only moves when the spec says.
local wfhost = require "wfhost"

local M = {}

local function tmpdb()
  local p = os.tmpname()
  os.remove(p)
  return p .. ".db"
end

local Host = {}
Host.__index = Host

local function open(self)
  self.h = assert(wfhost.open {
    db = self.db, workflows = self.workflows, virtual_time = true, now = self.now,
    seed = 7, log_level = self.log_level or "none",
    instruction_budget = self.instruction_budget, memory_limit = self.memory_limit,
  })
  for name, fn in pairs(self.actions) do
    assert(self.h:register_action(name, function(params, call)
      local list = self.calls[name]
      list[#list + 1] = { params = params, key = call.key, attempt = call.attempt }
      return fn(params, call)
    end))
  end
end

-- M.new { workflows = "workflows", actions = { name = function(params, call) ... end } }
function M.new(opts)
  local self = setmetatable({
    db = tmpdb(), workflows = opts.workflows or "workflows", actions = opts.actions or {},
    calls = {}, now = 1700000000000, log_level = opts.log_level,
    instruction_budget = opts.instruction_budget, memory_limit = opts.memory_limit,
  }, Host)
  for name in pairs(self.actions) do self.calls[name] = {} end
  open(self)
  return self
end

function Host:start(workflow, input, id)
  local r = assert(self.h:start(workflow, input, id))
  assert(self.h:drain())
  return r
end

function Host:signal(id, event, data)
  local ok, err, code = self.h:signal(id, event, data)
  if not ok then return nil, err, code end
  assert(self.h:drain())
  return true
end

function Host:cancel(id)
  assert(self.h:cancel(id))
  assert(self.h:drain())
end

-- Moves the virtual clock by a duration in seconds and runs what fell due.
function Host:advance(seconds)
  self.now = self.now + math.floor(seconds * 1000)
  assert(self.h:advance(math.floor(seconds * 1000)))
end

function Host:get(id) return assert(self.h:get(id)) end
function Host:history(id) return assert(self.h:history(id)) end

-- The kinds of the history entries, in order, for compact assertions.
function Host:kinds(id, filter)
  local out = {}
  for _, e in ipairs(self:history(id)) do
    if not filter or filter[e.kind] then out[#out + 1] = e.kind .. (e.name and (" " .. e.name) or "") end
  end
  return out
end

-- Closes the host and opens a new one on the same database: a fresh Lua state rebuilds every
-- instance from its history, as after a crash.
function Host:restart()
  self.h:close()
  open(self)
  assert(self.h:drain())
end

function Host:close()
  self.h:close()
  os.remove(self.db)
  os.remove(self.db .. "-wal")
  os.remove(self.db .. "-shm")
  os.remove(self.db .. ".lock")
end

M.wfhost = wfhost
return M

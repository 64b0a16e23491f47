-- What JSON becomes when a workflow receives it (an action's result, an event's data, its
-- input): whole numbers are integers, other numbers floats; a null field of an object is
-- dropped; a null inside an array stays json.null, so the array keeps its length.
local wt = require "workflow.testing"
local write = require("support").write
local null = require("cjson").null

describe("JSON values a workflow receives #unit", function()
  local dir = os.tmpname() .. ".d"
  local env
  after_each(function() if env then env:close() end env = nil end)
  teardown(function() os.execute("rm -rf " .. dir) end)

  write(dir, "kinds.lua", [[
local function kinds(r)
  return { a = math.type(r.a), b = math.type(r.b), big = math.type(r.big), neg = math.type(r.neg),
           n = #r.arr, hole = r.arr[2] == json.null, x = math.type(r.nested.x),
           gone = r.nested.gone == nil, deep = math.type(r.nested.list[1][1]) }
end
return workflow.define { name = "kinds", run = function(ctx, input)
  local sent = { a = 7, b = 7.5, big = 2^53, neg = -0.0, arr = { 1, json.null, 3 },
                 nested = { x = 2.0, gone = json.null, list = { { 4.0 } } } }
  local echoed = ctx.actions.echo(sent)
  local ev = ctx:wait_for("go")
  return { result = kinds(echoed), event = kinds(ev.data), input = kinds(input) }
end }
]])
  local expect = { a = "integer", b = "float", big = "float", neg = "integer", n = 3, hole = true,
                   x = "integer", gone = true, deep = "integer" }

  it("keeps integers integers, drops null fields and keeps nulls in arrays", function()
    env = wt.env { workflows = dir }
    local value = { a = 7, b = 7.5, big = 2^53, neg = -0.0, arr = { 1, null, 3 },
                    nested = { x = 2.0, gone = null, list = { { 4.0 } } } }
    local run = env:start("kinds", value)
    run:signal("go", value)
    assert.are.same({ result = expect, event = expect, input = expect }, run:output())
  end)
end)

-- bench/summary.lua: reads `RESULT {json}` lines (stdin) and prints the table for people.
-- Run by bench/run.sh; uses lua-cjson, a dependency of the project already.
local cjson = require "cjson"

-- The figures shown for each workload, in order: key, label, format.
local shown = {
  w1 = { { "wall_s", "wall", "%.3f s" }, { "steps_per_s", "steps/s", "%.0f" }, { "wf_per_s", "wf/s", "%.0f" },
         { "peak_rss_mb", "RSS", "%.1f MB" } },
  seq = { { "median_ms", "median", "%.3f ms" }, { "p99_ms", "p99", "%.3f ms" }, { "peak_rss_mb", "RSS", "%.1f MB" } },
  w2 = { { "park_s", "park all", "%.3f s" }, { "signal_to_done_s", "signal->done", "%.3f s" },
         { "peak_rss_mb", "RSS", "%.1f MB" } },
  park = { { "peak_rss_mb", "RSS", "%.1f MB" }, { "db_mb", "db", "%.1f MB" }, { "ready_s", "ready", "%.3f s" },
           { "resume_ms", "resume", "%.3f ms" } },
  replay = { { "replay_ms", "replay", "%.3f ms" }, { "live_ms", "live", "%.3f ms" } },
}

local function fmt_target(t)
  if t == nil or t == cjson.null then return "-" end
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    local bound = (k:match("per_s$") and ">= " or "<= ") .. (math.type(v) == "float" and string.format("%g", v) or tostring(v))
    parts[#parts + 1] = k .. " " .. bound
  end
  return table.concat(parts, ", ")
end

local rows, widths = {}, { 0, 0, 0, 0, 0 }
local missed, failed = 0, 0
for line in io.lines() do
  local json = line:match("^RESULT (.*)$")
  if json then
    local ok, r = pcall(cjson.decode, json)
    if ok then
      local figs = {}
      for _, f in ipairs(shown[r.workload] or {}) do
        local v = r[f[1]]
        if type(v) == "number" then figs[#figs + 1] = f[2] .. " " .. string.format(f[3], v) end
      end
      local met = r.met == true and "yes" or r.met == false and "NO" or "-"
      if r.verified == false then met, failed = "NOT VERIFIED", failed + 1
      elseif r.met == false then missed = missed + 1 end
      local row = { r.workload .. " " .. tostring(math.tointeger(r.n) or r.n), r.durability,
                    table.concat(figs, "  "), fmt_target(r.target), met }
      for i, c in ipairs(row) do widths[i] = math.max(widths[i], #c) end
      rows[#rows + 1] = row
    end
  end
end

local head = { "workload", "durability", "figures", "target", "met" }
for i, c in ipairs(head) do widths[i] = math.max(widths[i], #c) end
local function out(row)
  local cells = {}
  for i, c in ipairs(row) do cells[i] = c .. string.rep(" ", widths[i] - #c) end
  print((table.concat(cells, "  "):gsub("%s+$", "")))
end
out(head)
local rule = {}
for i = 1, #head do rule[i] = string.rep("-", widths[i]) end
out(rule)
for _, r in ipairs(rows) do out(r) end
print(string.format("\n%d results, %d targets missed, %d not verified", #rows, missed, failed))
os.exit(failed == 0 and 0 or 1)

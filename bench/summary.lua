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

-- The figure that orders repeated runs of a workload; the run in the middle is shown.
local key = { w1 = "steps_per_s", seq = "median_ms", w2 = "signal_to_done_s", park = "peak_rss_mb",
              replay = "replay_ms" }

-- Results grouped by workload, N and durability, in the order they came.
local groups, order = {}, {}
for line in io.lines() do
  local json = line:match("^RESULT (.*)$")
  if json then
    local ok, r = pcall(cjson.decode, json)
    if ok then
      local id = r.workload .. " " .. tostring(math.tointeger(r.n) or r.n) .. " " .. tostring(r.durability)
      if not groups[id] then groups[id], order[#order + 1] = {}, id end
      table.insert(groups[id], r)
    end
  end
end

local rows, widths = {}, { 0, 0, 0, 0, 0 }
local missed, failed = 0, 0
for _, id in ipairs(order) do
  local runs, k = groups[id], key[groups[id][1].workload]
  for _, r in ipairs(runs) do
    if r.verified == false then failed = failed + 1 end
  end
  if k and #runs > 1 then table.sort(runs, function(a, b) return (a[k] or 0) < (b[k] or 0) end) end
  local r = runs[(#runs + 1) // 2] -- the median run (the lower middle of an even count)
  local figs = {}
  for _, f in ipairs(shown[r.workload] or {}) do
    local v = r[f[1]]
    if type(v) == "number" then
      local fig = f[2] .. " " .. string.format(f[3], v)
      if f[1] == k and #runs > 1 then
        fig = fig .. string.format(" (median of %d: %s-%s)", #runs, string.format(f[3], runs[1][k]),
          string.format(f[3], runs[#runs][k]))
      end
      figs[#figs + 1] = fig
    end
  end
  local met = r.met == true and "yes" or r.met == false and "NO" or "-"
  if r.verified == false then met = "NOT VERIFIED"
  elseif r.met == false then missed = missed + 1 end
  local row = { r.workload .. " " .. tostring(math.tointeger(r.n) or r.n), r.durability,
                table.concat(figs, "  "), fmt_target(r.target), met }
  for i, c in ipairs(row) do widths[i] = math.max(widths[i], #c) end
  rows[#rows + 1] = row
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
print(string.format("\n%d workloads, %d targets missed (judged on the median run), %d runs not verified", #rows, missed, failed))
os.exit(failed == 0 and 0 or 1)

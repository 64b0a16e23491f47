-- Helpers shared by the specs (on busted's path: spec/?.lua).
local M = {}

-- Writes a workflow file (or any file) into dir, creating dir.
function M.write(dir, name, src)
  os.execute("mkdir -p " .. dir)
  local f = assert(io.open(dir .. "/" .. name, "w"))
  f:write(src)
  f:close()
end

return M

-- Shared pricing rules, loaded by workflows with `require "lib.pricing"`.
local M = {}

-- Orders of 100 or more get 5% off. Amounts are rounded to cents.
function M.total(items)
  if type(items) ~= "table" or #items == 0 then error("an order needs at least one item", 2) end
  local sum = 0
  for _, item in ipairs(items) do
    sum = sum + (item.qty or 1) * item.price
  end
  if sum >= 100 then sum = sum * 0.95 end
  return math.floor(sum * 100 + 0.5) / 100
end

return M

-- More budget for a stream that outgrew its reservation: up to ARGV[5] tokens, as
-- many as every period has left; -1 when the day's budget is spent, -2 the month's.
--
-- KEYS: 1 day budget, 2 month budget
-- ARGV: 1 day budget, 2 day counter ttl, 3 month budget, 4 month counter ttl
--       (budget 0: none), 5 tokens wanted
local granted = tonumber(ARGV[5])
local budgets = {{KEYS[1], tonumber(ARGV[1]), ARGV[2]}, {KEYS[2], tonumber(ARGV[3]), ARGV[4]}}
for index, budget in ipairs(budgets) do
  if budget[2] > 0 then
    local left = budget[2] - (tonumber(redis.call('GET', budget[1])) or 0)
    if left <= 0 then
      return -index
    end
    granted = math.min(granted, left)
  end
end
for _, budget in ipairs(budgets) do
  if budget[2] > 0 then
    redis.call('INCRBY', budget[1], granted)
    redis.call('EXPIRE', budget[1], budget[3])
  end
end
return granted

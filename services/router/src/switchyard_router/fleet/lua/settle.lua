-- A request's end: its usage charges the key's token bucket, and replaces its
-- reservation in the budget periods it was made in.
--
-- KEYS: 1 token bucket, 2 day budget, 3 month budget
-- ARGV: 1 tokens per second (0: no token rate), 2 token burst, 3 tokens used,
--       4 tokens reserved, 5 "1" if there is a day budget, 6 "1" for a month budget
local used, reserved = tonumber(ARGV[3]), tonumber(ARGV[4])
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
if rate > 0 and used > 0 then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  local stored = redis.call('HMGET', KEYS[1], 'level', 'at')
  local at = tonumber(stored[2])
  local tokens = burst
  if at ~= nil then
    tokens = math.min(burst, tonumber(stored[1]) + math.max(0, now - at) * rate)
  end
  tokens = tokens - used
  redis.call('HSET', KEYS[1], 'level', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
end
if used ~= reserved then
  for index, flag in ipairs({ARGV[5], ARGV[6]}) do
    -- A counter that is gone (its period long over, or a restarted Redis) never
    -- held this reservation: leave it alone.
    if flag == '1' and redis.call('EXISTS', KEYS[1 + index]) == 1 then
      redis.call('INCRBY', KEYS[1 + index], used - reserved)
    end
  end
end
return 0

-- One request's admission, atomically and in one round trip: the key's request and
-- token rates (token buckets, as fleet/rates.py), the cached answer, the budget
-- reservation (as fleet/budget.py). Time is Redis's own, so every router agrees.
--
-- KEYS: 1 request bucket, 2 token bucket, 3 day budget, 4 month budget, 5 cached answer
-- ARGV: 1 requests per second, 2 request burst, 3 tokens per second, 4 token burst
--       (rate 0: no such limit), 5 day budget, 6 day counter ttl, 7 month budget,
--       8 month counter ttl (budget 0: none), 9 tokens to reserve, 10 "1" if fewer
--       will do, 11 "1" to look up the cached answer
-- Returns {0, tokens reserved, cached answer or nil}; {1 or 2, wait in seconds} when
-- over the request (1) or token (2) rate; {3 or 4, tokens left} when the day (3) or
-- month (4) budget cannot pay for the reservation.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local function level(key, rate, burst)
  local stored = redis.call('HMGET', key, 'level', 'at')
  local at = tonumber(stored[2])
  if at == nil then
    return burst
  end
  return math.min(burst, tonumber(stored[1]) + math.max(0, now - at) * rate)
end

local request_rate, request_burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local token_rate, token_burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local refusal, wait = 0, 0
local requests
if request_rate > 0 then
  requests = level(KEYS[1], request_rate, request_burst)
  if requests < 1 then
    refusal, wait = 1, (1 - requests) / request_rate
  end
end
if token_rate > 0 then
  local tokens = level(KEYS[2], token_rate, token_burst)
  if tokens < 1 and (1 - tokens) / token_rate > wait then
    refusal, wait = 2, (1 - tokens) / token_rate
  end
end
if refusal > 0 then
  return {refusal, tostring(wait)}
end

local function take_request()
  if request_rate > 0 then
    local left = requests - 1
    redis.call('HSET', KEYS[1], 'level', tostring(left), 'at', tostring(now))
    -- Forgotten once full again: a missing bucket is a full one.
    redis.call('PEXPIRE', KEYS[1], math.ceil((request_burst - left) / request_rate * 1000) + 1000)
  end
end

if ARGV[11] == '1' then
  local cached = redis.call('GET', KEYS[5])
  if cached then
    take_request()
    return {0, 0, cached}
  end
end

local want = tonumber(ARGV[9])
local granted = want
local budgets = {{KEYS[3], tonumber(ARGV[5]), ARGV[6]}, {KEYS[4], tonumber(ARGV[7]), ARGV[8]}}
if want > 0 then
  for index, budget in ipairs(budgets) do
    if budget[2] > 0 then
      local left = budget[2] - (tonumber(redis.call('GET', budget[1])) or 0)
      if left <= 0 or (left < want and ARGV[10] ~= '1') then
        return {2 + index, left}
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
end
take_request()
return {0, granted}

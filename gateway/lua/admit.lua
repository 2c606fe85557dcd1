-- admit.lua: admission for one request in ONE round trip.
--
-- Checks, in order, the concurrency lease, the request bucket (rpm), the token bucket (tpm) and
-- the monthly quota; if all pass it takes one request token, reserves `reserve` tokens from the
-- token bucket and the quota, adds a lease and records the request in the in-flight hash (what
-- a surviving replica needs to settle it if this one dies). If any fails it changes nothing
-- (expired leases are purged either way).
--
-- KEYS[1]  rl:{tenant}:req    hash {t = tokens (float), ts = last update, ms}   request bucket
-- KEYS[2]  rl:{tenant}:tok    hash {t, ts}                                       token bucket
-- KEYS[3]  quota:{tenant}     hash {YYYY-MM = tokens used + reserved}           monthly quota
-- KEYS[4]  lease:{tenant}     zset {lease id -> expiry, ms}                      concurrency
-- KEYS[5]  inflight:{tenant}  hash {lease id -> json record}                     unsettled requests
-- ARGV[1]  requests per minute (bucket capacity; refills at rpm/60 per second)
-- ARGV[2]  tokens per minute (capacity; refills at tpm/60 per second)
-- ARGV[3]  tokens per month
-- ARGV[4]  max concurrent requests
-- ARGV[5]  tokens to reserve: a bound on the request's true usage (gateway/estimate.py)
-- ARGV[6]  lease id (unique per attempt, not the client's request id)
-- ARGV[7]  lease ttl, ms
-- ARGV[8]  request id          } stored in the in-flight record with the reservation and month,
-- ARGV[9]  key id              } so that a survivor can settle the request from the record
-- ARGV[10] model               } alone (heartbeat.lua adds the running usage to it)
-- ARGV[11] replica id          }
-- ARGV[12] prompt token estimate (metered if the replica dies before its first heartbeat)
-- ARGV[13] tokens that must be available to admit (the estimate + max_tokens; <= ARGV[5]).
--          Admitting on the estimate but taking the bound keeps normal traffic's limits exact
--          (a request waits for what it will likely use, not for its worst case) while the
--          bucket still pays the worst case: a burst overshoots by at most the last admitted
--          request's (reserve - need), however its prompt is shaped.
--
-- Returns name/value pairs (the gateway reads them by name, never by position):
--   allowed (1|0), limit ('' | concurrency | requests | tokens | quota),
--   requests_remaining, requests_reset_s, tokens_remaining, tokens_reset_s, retry_after_s,
--   limit_value, used, requested, month, quota_used
-- quota_used (integer tokens) is the month's quota hash value after this call, reservation
-- included when allowed: the gateway turns it into its quota-remaining gauge without another
-- round trip.
-- Fractions come back as strings: Lua numbers are truncated to integers on the way out.

-- Time from Redis, never from a gateway clock: replicas may disagree, Redis is one clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local secs = tonumber(t[1])

local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local quota = tonumber(ARGV[3])
local max_conc = tonumber(ARGV[4])
local reserve = tonumber(ARGV[5])
local need = tonumber(ARGV[13]) or reserve
local lease_ms = tonumber(ARGV[7])

-- Civil month from unix seconds (Howard Hinnant's days_from_civil inverse), so the quota month
-- also follows Redis time.
local z = math.floor(secs / 86400) + 719468
local era = math.floor(z / 146097)
local doe = z - era * 146097
local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
local mp = math.floor((5 * doy + 2) / 153)
local m = mp < 10 and mp + 3 or mp - 9
local y = yoe + era * 400 + (m <= 2 and 1 or 0)
local month = string.format('%04d-%02d', y, m)

local function level(key, cap, per_ms)
  local s = redis.call('HMGET', key, 't', 'ts')
  local tokens = tonumber(s[1])
  if tokens == nil then return cap end
  local elapsed = now - tonumber(s[2])
  if elapsed < 0 then elapsed = 0 end
  return math.min(cap, tokens + elapsed * per_ms)
end

local req_rate = rpm / 60000.0
local tok_rate = tpm / 60000.0
local req = level(KEYS[1], rpm, req_rate)
local tok = level(KEYS[2], tpm, tok_rate)

-- Expired leases belong to replicas that died mid-request: drop them before counting.
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local in_flight = redis.call('ZCARD', KEYS[4])
local used_month = tonumber(redis.call('HGET', KEYS[3], month) or '0')

local function fmt(x) return string.format('%.3f', x) end

local function deny(limit, retry_s, limit_value, used, requested)
  return {'allowed', 0, 'limit', limit,
          'requests_remaining', math.floor(req), 'requests_reset_s', fmt((rpm - req) / req_rate / 1000),
          'tokens_remaining', math.floor(tok), 'tokens_reset_s', fmt((tpm - tok) / tok_rate / 1000),
          'retry_after_s', fmt(retry_s), 'limit_value', limit_value, 'used', fmt(used),
          'requested', fmt(requested), 'month', month, 'quota_used', used_month}
end

if in_flight >= max_conc then
  -- The earliest lease expiry bounds the wait; usually a settle frees a slot much sooner.
  return deny('concurrency', 1, max_conc, in_flight, 1)
end
if req < 1 then
  return deny('requests', (1 - req) / req_rate / 1000, rpm, rpm - req, 1)
end
if need > tpm then
  -- Can never fit: retry-after is meaningless, -1 tells the caller so.
  return deny('tokens', -1, tpm, tpm - tok, need)
end
if tok < need then
  return deny('tokens', (need - tok) / tok_rate / 1000, tpm, tpm - tok, need)
end
if used_month + need > quota then
  return deny('quota', -1, quota, used_month, need)
end

req = req - 1
tok = tok - reserve
redis.call('HSET', KEYS[1], 't', req, 'ts', now)
redis.call('HSET', KEYS[2], 't', tok, 'ts', now)
-- An idle bucket refills to full; its key can go then (plus a margin).
redis.call('PEXPIRE', KEYS[1], math.ceil((rpm - req) / req_rate) + 1000)
redis.call('PEXPIRE', KEYS[2], math.ceil((tpm - tok) / tok_rate) + 1000)
redis.call('HINCRBY', KEYS[3], month, reserve)
redis.call('ZADD', KEYS[4], now + lease_ms, ARGV[6])
redis.call('PEXPIRE', KEYS[4], lease_ms + 1000)
-- No TTL on the in-flight hash: its records leave by settle.lua (normal end, spool replay or a
-- survivor's recovery); expiring them would silently keep their reservations in the quota.
redis.call('HSET', KEYS[5], ARGV[6], cjson.encode({
  rid = ARGV[8], key = ARGV[9], model = ARGV[10], replica = ARGV[11], month = month,
  reserved = reserve, prompt = tonumber(ARGV[12]) or 0, completion = 0, exp = math.floor(now + lease_ms)}))

return {'allowed', 1, 'limit', '',
        'requests_remaining', math.floor(req), 'requests_reset_s', fmt((rpm - req) / req_rate / 1000),
        'tokens_remaining', math.floor(tok), 'tokens_reset_s', fmt((tpm - tok) / tok_rate / 1000),
        'retry_after_s', '0', 'limit_value', 0, 'used', '0', 'requested', fmt(reserve),
        'month', month, 'quota_used', used_month + reserve}

-- settle.lua: close one admitted request in ONE round trip.
--
-- Releases the lease, refunds (or charges) the difference between the reservation and the true
-- usage to the token bucket and the monthly quota, and meters the usage exactly once per
-- request id: counters per day/model and one event on the tenant's usage stream.
--
-- The in-flight record (written by admit.lua) says who owns the reservation: the first settle
-- that deletes it returns the unused reservation; a settle that finds it gone (a survivor
-- already recovered this request, or a replayed spool entry) changes no bucket and no quota.
-- The gateway that served the request, its spool replay and a survivor's recovery may all try
-- to settle the same request; only one of them moves the reservation and one meters it.
--
-- KEYS[1]  rl:{tenant}:tok       token bucket (same layout as in admit.lua)
-- KEYS[2]  quota:{tenant}        monthly quota hash
-- KEYS[3]  lease:{tenant}        concurrency leases
-- KEYS[4]  usage:{tenant}        hash {YYYY-MM-DD|model|requests|prompt_tokens|completion_tokens|cost_micro_usd}
-- KEYS[5]  events:{tenant}       stream, one entry per settled request
-- KEYS[6]  inflight:{tenant}     hash {lease id -> json record} (admit.lua)
-- KEYS[7]  vtc:{tenant}          hash {model -> virtual token counter} (fairness, gateway/vtcsync.py)
-- KEYS[8]  done:{tenant}:<rid>   marker: this request id was metered already
--          (last: the tenant's other keys are the same on every call, and the gateway packs
--          them once per tenant; see Head in scriptconn.py)
-- ARGV[1]  lease id
-- ARGV[2]  tokens reserved at admission
-- ARGV[3]  prompt tokens used
-- ARGV[4]  completion tokens used
-- ARGV[5]  1 when the request was served (usage counts), 0 when it failed before serving
-- ARGV[6]  tokens per minute (bucket capacity and refill rate)
-- ARGV[7]  quota month the reservation was made in (YYYY-MM, from admit.lua)
-- ARGV[8]  model
-- ARGV[9]  cost, integer micro-dollars (integers so INCRBY never drifts like floats would)
-- ARGV[10] request id
-- ARGV[11] key id
-- ARGV[12] latency, ms
-- ARGV[13] HTTP status
-- ARGV[14] TTL of the done marker, s
-- ARGV[15] approximate max length of the usage stream
-- ARGV[16] tenant
-- ARGV[17] 1 when a survivor settles a dead replica's request from its last checkpoint, else 0
-- ARGV[18] model version that served the request ('' when unknown, e.g. recovered)
-- ARGV[19] region of the backend that served it ('' when none was reached or it has no region)
-- ARGV[20] fair-queue charge: (prompt + 2 x completion) / plan weight, decimal string; '0' when
--          the model has no fair queue or nothing was served (an unserved request is never charged)
-- ARGV[21] the counter's floor: the lift the fair queue applied when the tenant became active;
--          the counter becomes max(counter, floor) + charge, so the lift is global too
-- ARGV[22] release: '1' when the gateway does not know whether admit.lua ran for this lease (the
--          admit's reply was lost: the connection dropped or timed out after the command was
--          written; the client was answered 503). If the in-flight record exists, admit ran: its
--          lease is released and its reservation (amount and month read from the record, so
--          ARGV[2] and ARGV[7] are ignored) goes back to the token bucket and the quota. Nothing
--          is metered either way: no counters, no done marker, no usage event, no fairness
--          charge. Without the record (admit never ran, or this release ran already) it is a
--          no-op that writes nothing, so the gateway can send it, spool it and replay it blindly.
--
-- Returns name/value pairs: counted (1 metered | 0 not served | -1 request id already metered),
--   tokens_level (token bucket level after), quota_used (tokens used + reserved in the
--   reservation's month after this call), owned (1 when this call returned the reservation).
-- quota_used feeds the gateway's quota-remaining gauge; it comes from the HINCRBY that applies
-- the refund, or from one HGET when the reservation was exact (no refund to apply).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local secs = tonumber(t[1])

local reserved = tonumber(ARGV[2])
local month = ARGV[7]
local release = ARGV[22] == '1'
if release then
  local rec = redis.call('HGET', KEYS[6], ARGV[1])
  if not rec then
    return {'counted', 0, 'tokens_level', '0', 'quota_used', 0, 'owned', 0}
  end
  local r = cjson.decode(rec)
  reserved = tonumber(r.reserved)
  month = r.month
end

redis.call('ZREM', KEYS[3], ARGV[1])
local owned = redis.call('HDEL', KEYS[6], ARGV[1])
local recovered = ARGV[17] == '1'
if owned == 0 and recovered then
  -- Another survivor (or the replica itself, late) settled it first: nothing left to do.
  return {'counted', -1, 'tokens_level', '0', 'quota_used', 0, 'owned', 0}
end

local prompt = tonumber(ARGV[3])
local completion = tonumber(ARGV[4])
local served = ARGV[5] == '1' and not release
local tpm = tonumber(ARGV[6])
local counted = 0
local charge = 0

if served then
  -- A retried or replayed request id is metered (usage, cost, event) once: the first settle
  -- wins. The limits still see every generation: a replay did use the backend, and a client
  -- must not get free capacity by reusing an id.
  charge = prompt + completion
  if redis.call('SET', KEYS[8], '1', 'NX', 'EX', tonumber(ARGV[14])) then
    counted = 1
  else
    counted = -1
  end
end

-- Refund unused reservation (or charge an overrun): the bucket may go negative, which is debt
-- that the next requests wait out. A missing bucket key has refilled to full and expired.
local delta = reserved - charge
if owned == 0 then
  -- The reservation was settled already (recovery or an earlier replay): leave the limits alone.
  delta = 0
end
local s = redis.call('HMGET', KEYS[1], 't', 'ts')
local level = tonumber(s[1])
if level ~= nil then
  local rate = tpm / 60000.0
  local elapsed = now - tonumber(s[2])
  if elapsed < 0 then elapsed = 0 end
  level = math.min(tpm, math.min(tpm, level + elapsed * rate) + delta)
  redis.call('HSET', KEYS[1], 't', level, 'ts', now)
  redis.call('PEXPIRE', KEYS[1], math.max(1000, math.ceil((tpm - level) / rate) + 1000))
else
  level = tpm
end
local quota_used
if delta ~= 0 then
  quota_used = redis.call('HINCRBY', KEYS[2], month, -delta)
else
  quota_used = tonumber(redis.call('HGET', KEYS[2], month) or '0')
end

-- Day from Redis time, like the month in admit.lua.
local z = math.floor(secs / 86400) + 719468
local era = math.floor(z / 146097)
local doe = z - era * 146097
local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
local mp = math.floor((5 * doy + 2) / 153)
local d = doy - math.floor((153 * mp + 2) / 5) + 1
local m = mp < 10 and mp + 3 or mp - 9
local y = yoe + era * 400 + (m <= 2 and 1 or 0)
local prefix = string.format('%04d-%02d-%02d|', y, m, d) .. ARGV[8] .. '|'

local fair_charge = tonumber(ARGV[20] or '0') or 0
if counted == 1 and fair_charge > 0 and KEYS[7] then
  -- Once per request id, like the metering: a replayed settle does not charge the counter twice.
  local c = tonumber(redis.call('HGET', KEYS[7], ARGV[8]) or '0')
  local floor = tonumber(ARGV[21] or '0') or 0
  if floor > c then c = floor end
  redis.call('HSET', KEYS[7], ARGV[8], string.format('%.3f', c + fair_charge))
end
if counted == 1 then
  redis.call('HINCRBY', KEYS[4], prefix .. 'requests', 1)
  redis.call('HINCRBY', KEYS[4], prefix .. 'prompt_tokens', prompt)
  redis.call('HINCRBY', KEYS[4], prefix .. 'completion_tokens', completion)
  redis.call('HINCRBY', KEYS[4], prefix .. 'cost_micro_usd', tonumber(ARGV[9]))
end
if counted ~= -1 and not release then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[15], '*',
    'request_id', ARGV[10], 'tenant', ARGV[16], 'key_id', ARGV[11], 'model', ARGV[8],
    'prompt_tokens', counted == 1 and prompt or 0, 'completion_tokens', counted == 1 and completion or 0,
    'cost_micro_usd', counted == 1 and ARGV[9] or 0, 'latency_ms', ARGV[12], 'status', ARGV[13],
    'recovered', ARGV[17], 'version', ARGV[18] or '', 'region', ARGV[19] or '')
end

return {'counted', counted, 'tokens_level', string.format('%.3f', level), 'quota_used', quota_used,
        'owned', owned}

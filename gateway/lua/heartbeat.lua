-- heartbeat.lua: keep one long request's lease alive and checkpoint its running usage.
--
-- Sent every `lease_heartbeat_s` by the request's owner while it runs (never per token; a
-- request that ends before the first beat never sends one, so short requests stay at two round
-- trips). If the gateway dies the beats stop, the lease expires after its TTL like any other,
-- and the record holds the usage as of the last beat: what a survivor meters.
--
-- KEYS[1]  lease:{tenant}     zset {lease id -> expiry, ms}
-- KEYS[2]  inflight:{tenant}  hash {lease id -> json record} (admit.lua)
-- ARGV[1]  lease id
-- ARGV[2]  lease ttl, ms
-- ARGV[3]  prompt tokens so far
-- ARGV[4]  completion tokens so far
--
-- Returns name/value pairs: renewed (1 | 0 when the record is gone: a survivor already settled
-- this request, so it must not take a concurrency slot again), expires_ms (new expiry, Redis ms).

local rec = redis.call('HGET', KEYS[2], ARGV[1])
if not rec then
  return {'renewed', 0, 'expires_ms', 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local lease_ms = tonumber(ARGV[2])
local exp = math.floor(now + lease_ms)
local r = cjson.decode(rec)
r.prompt = tonumber(ARGV[3])
r.completion = tonumber(ARGV[4])
r.exp = exp
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(r))
-- ZADD without XX: if an outage longer than the TTL let admit.lua purge the lease, the request
-- is still running and counts again from now on.
redis.call('ZADD', KEYS[1], exp, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease_ms + 1000)
return {'renewed', 1, 'expires_ms', exp}

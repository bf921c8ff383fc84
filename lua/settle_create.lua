-- Renews, or gives up, the lease on a create's Idempotency-Key, and marks the
-- key's book made (book_claims.py). A lease that lapsed unclaimed is taken
-- back; one another request holds now is left alone.
-- KEYS[1] the key's claim     KEYS[2] its lease
-- ARGV[1] this request's token
-- ARGV[2] 'renew' (ARGV[3]: the lease's expiry, ms), 'release', or 'made'
--         (ARGV[3]: the claim's expiry, ms: the idempotency window)
-- Returns 1 when done, 0 when another request holds the lease.
local lease = redis.call('GET', KEYS[2])
if lease and lease ~= ARGV[1] then return 0 end
if ARGV[2] == 'renew' then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  return 1
end
if ARGV[2] == 'made' then
  local held = redis.call('GET', KEYS[1])
  if held and not string.find(held, ' made$') then
    redis.call('SET', KEYS[1], held .. ' made', 'PX', ARGV[3])
  end
end
redis.call('DEL', KEYS[2])
return 1

-- Renews, or gives up, the lease on a create's Idempotency-Key, and marks the
-- key's book made (book_claims.py). A lease that lapsed unclaimed is taken
-- back while the book is still to be made; one another request holds now is
-- left alone.
-- KEYS[1] the key's claim     KEYS[2] its lease
-- ARGV[1] this request's token
-- ARGV[2] 'renew' (ARGV[3]: the lease's expiry, ms), 'release', or 'made'
--         (ARGV[3]: the claim's expiry, ms: the idempotency window)
-- ARGV[4], ARGV[5] the request's fingerprint and the book's id
-- Returns 1 when done, 0 when another request holds the lease (for 'renew',
-- also when the book was made meanwhile or the claim is gone; for 'made',
-- when the key is bound to another request now).
local lease = redis.call('GET', KEYS[2])
if lease and lease ~= ARGV[1] then return 0 end
local mine = ARGV[4] .. ' ' .. ARGV[5]
local held = redis.call('GET', KEYS[1])
if ARGV[2] == 'renew' then
  if held ~= mine then return 0 end
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  return 1
end
local done = 1
if ARGV[2] == 'made' then
  -- Unmarked (or marked by an older version), or expired meanwhile: mark it.
  if not held or held == mine or string.sub(held, 1, #mine + 1) == mine .. ' ' then
    redis.call('SET', KEYS[1], mine .. ' made', 'PX', ARGV[3])
  else
    done = 0
  end
end
redis.call('DEL', KEYS[2])
return done

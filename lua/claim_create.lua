-- Binds an Idempotency-Key to the book a create makes (book_claims.py), and
-- takes the lease of whoever is making it now.
-- KEYS[1] the key's claim     KEYS[2] its lease
-- ARGV[1] the request's fingerprint    ARGV[2] the id for a new book
-- ARGV[3] the claim's expiry (ms: the idempotency window)
-- ARGV[4] a token for this request     ARGV[5] the lease's expiry (ms)
-- Returns {outcome, book id}: 'new' (ARGV[2] is now the key's book), 'resume'
-- (the key's book is not made yet and nobody holds the lease: now this
-- request does), 'made', 'busy' (another request holds the lease), or
-- 'reused' (the key is bound to another request).
local lease_ms = tonumber(ARGV[5])
local held = redis.call('GET', KEYS[1])
if not held then
  if not redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', lease_ms) then return {'busy', ''} end
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
  return {'new', ARGV[2]}
end
local fingerprint, book_id, mark = string.match(held, '^(%S+) (%S+) ?(%S*)$')
if fingerprint ~= ARGV[1] then return {'reused', ''} end
if mark == 'made' then return {'made', book_id} end
-- A claim no longer than a lease, without one, was written by a version of
-- the service before leases (30 s, renewed by its maker): it may be at work.
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('PTTL', KEYS[1]) <= lease_ms then
  return {'busy', book_id}
end
if not redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', lease_ms) then return {'busy', book_id} end
-- The window runs on from the retry, which may make the book only now.
redis.call('SET', KEYS[1], fingerprint .. ' ' .. book_id, 'PX', ARGV[3])
return {'resume', book_id}

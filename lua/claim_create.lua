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
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
  return {'new', ARGV[2]}
end
local fingerprint, book_id, mark = string.match(held, '^(%S+) (%S+) ?(%S*)$')
if fingerprint ~= ARGV[1] then return {'reused', ''} end
if mark == 'made' then return {'made', book_id} end
if redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[5]) then
  return {'resume', book_id}
end
return {'busy', book_id}

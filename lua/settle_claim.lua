-- Settles the claim a book's create holds on an Idempotency-Key, if it still
-- holds it (book_claims.py): renews it, marks the book made, or releases it.
-- A claim that lapsed and was taken by a retry is left to the retry.
-- KEYS[1] the claim
-- ARGV[1] the value this create set  ARGV[2] the new value ('' = release)
-- ARGV[3] the new value's expiry (ms)
-- Returns 1 when settled, 0 when the claim is no longer this create's.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1

-- Assigns a random free code of a book to a user.
-- KEYS[1] meta hash  KEYS[2] free set  KEYS[3] assigned hash  KEYS[4] user's zset
-- KEYS[5] locks zset KEYS[6] events stream
-- KEYS[7] the user's index of books (when ARGV[3] is set)
-- KEYS[7 or 8] idempotency list (optional)
-- ARGV[1] book id (must match the meta's)  ARGV[2] user id
-- ARGV[3] the book's number to add to the user's index ('' on a cluster)
-- ARGV[4] request fingerprint  ARGV[5] idempotency ttl (ms)
-- Returns {'ok'|'replayed', code view...} or {error status, detail...}.
local index_key, idem_key = index_and_idem_keys(7, ARGV[3])
local replay = idem_replay(idem_key, ARGV[4])
if replay then return replay end
local user = ARGV[2]
local m = redis.call('HMGET', KEYS[1], 'id', 'validFrom', 'validUntil', 'maxPerUser',
  'multipleRedeemsAllowed', 'maxRedeemsPerCode')
if m[1] ~= ARGV[1] then return {'book_not_found'} end
local now = now_ms()
if outside_window(m[2], m[3], now) then return {'book_not_active'} end
local cap = tonumber(m[4])
if cap and redis.call('ZCARD', KEYS[4]) >= cap then return {'user_limit_reached', cap} end
local code = redis.call('SPOP', KEYS[2])
if not code then return {'book_exhausted'} end
note_user_book(index_key, ARGV[3])
local a = {owner = user, at = now, times = 0, last = 0, v = 1}
write_assignment(KEYS[3], code, a)
redis.call('ZADD', KEYS[4], 0, code)
redis.call('HINCRBY', KEYS[1], 'assigned', 1)
emit_code(KEYS[6], 'assigned', m[1], code, a, now)
local result = reply('ok', code_view(m[1], code, a, 0, redeem_limit(m[5], m[6])))
idem_store(idem_key, ARGV[4], ARGV[5], result)
return result

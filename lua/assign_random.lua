-- Assigns a random free code of a book to a user.
-- KEYS[1] meta hash  KEYS[2] free set  KEYS[3] assigned hash  KEYS[4] user's zset
-- KEYS[5] locks zset KEYS[6] events stream  KEYS[7] idempotency list (optional)
-- ARGV[1] book id (must match the meta's)  ARGV[2] user id
-- ARGV[3] request fingerprint  ARGV[4] idempotency ttl (ms)
-- Returns {'ok'|'replayed', code view...} or {error status, detail...}.
local replay = idem_replay(KEYS[7], ARGV[3])
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
local a = {owner = user, at = now, times = 0, last = 0, v = 1}
write_assignment(KEYS[3], code, a)
redis.call('ZADD', KEYS[4], 0, code)
redis.call('HINCRBY', KEYS[1], 'assigned', 1)
emit_code(KEYS[6], 'assigned', m[1], code, a, now)
local result = reply('ok', code_view(m[1], code, a, 0, redeem_limit(m[5], m[6])))
idem_store(KEYS[7], ARGV[3], ARGV[4], result)
return result

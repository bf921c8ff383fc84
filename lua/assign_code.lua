-- Assigns one named code to a user; assigning it again to the same user
-- returns the existing assignment and changes nothing.
-- KEYS[1] meta hash  KEYS[2] free set  KEYS[3] assigned hash  KEYS[4] user's zset
-- KEYS[5] locks zset KEYS[6] events stream
-- KEYS[7] the user's index of books (when ARGV[4] is set)
-- KEYS[7 or 8] idempotency list (optional)
-- ARGV[1] code  ARGV[2] user id  ARGV[3] the book id the caller expects ('' for any)
-- ARGV[4] the book's number to add to the user's index ('' on a cluster)
-- ARGV[5] request fingerprint  ARGV[6] idempotency ttl (ms)
-- Returns {'ok'|'replayed', code view...} or {error status, detail...}.
local index_key, idem_key = index_and_idem_keys(7, ARGV[4])
local replay = idem_replay(idem_key, ARGV[5])
if replay then return replay end
local code, user = ARGV[1], ARGV[2]
local m = redis.call('HMGET', KEYS[1], 'id', 'validFrom', 'validUntil', 'maxPerUser',
  'multipleRedeemsAllowed', 'maxRedeemsPerCode')
if not m[1] then return {'book_not_found'} end
if ARGV[3] ~= '' and ARGV[3] ~= m[1] then return {'book_mismatch'} end
-- Ownership before the validity window, so that an end user learns nothing
-- about other users' codes from the status.
local a = read_assignment(KEYS[3], code)
if a and a.owner ~= user then return {'not_owner'} end
if not a and redis.call('SISMEMBER', KEYS[2], code) == 0 then return {'code_not_found'} end
local now = now_ms()
local limit = redeem_limit(m[5], m[6])
if a then
  -- Already this user's: the same answer, no change (also outside the
  -- validity window: nothing is assigned). It is a success, so a retry with
  -- the same Idempotency-Key replays it like any other.
  local result = reply('ok', code_view(m[1], code, a, locked_until(KEYS[5], code, now), limit))
  idem_store(idem_key, ARGV[5], ARGV[6], result)
  return result
end
if outside_window(m[2], m[3], now) then return {'book_not_active'} end
local cap = tonumber(m[4])
if cap and redis.call('ZCARD', KEYS[4]) >= cap then return {'user_limit_reached', cap} end
note_user_book(index_key, ARGV[4])
redis.call('SREM', KEYS[2], code)
a = {owner = user, at = now, times = 0, last = 0, v = 1}
write_assignment(KEYS[3], code, a)
redis.call('ZADD', KEYS[4], 0, code)
redis.call('HINCRBY', KEYS[1], 'assigned', 1)
emit_code(KEYS[6], 'assigned', m[1], code, a, now)
local result = reply('ok', code_view(m[1], code, a, 0, limit))
idem_store(idem_key, ARGV[5], ARGV[6], result)
return result

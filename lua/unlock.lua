-- Releases a lock; only the holder of its token may, or an operator (no
-- token: the caller checked the scope), which the event records as forced.
-- KEYS[1] meta hash  KEYS[2] assigned hash  KEYS[3] lock key  KEYS[4] locks zset
-- KEYS[5] events stream
-- ARGV[1] code  ARGV[2] user id  ARGV[3] lock token ('' to release any lock)
-- Returns {'ok', code view...} or {error status, detail...}.
local code, user, token = ARGV[1], ARGV[2], ARGV[3]
local m = redis.call('HMGET', KEYS[1], 'id', 'multipleRedeemsAllowed', 'maxRedeemsPerCode')
if not m[1] then return {'book_not_found'} end
local a = read_assignment(KEYS[2], code)
if not a then return {'not_assigned'} end
if a.owner ~= user then return {'not_owner'} end
local now = now_ms()
local held = redis.call('GET', KEYS[3])
if not held then return {'not_locked'} end
local forced = token == ''
if held ~= token and not forced then
  return {'locked', live_lock_until(KEYS[4], KEYS[3], code, now)}
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[4], code)
a.v = a.v + 1
write_assignment(KEYS[2], code, a)
if forced then
  emit_code(KEYS[5], 'unlocked', m[1], code, a, now, 'forced', '1')
else
  emit_code(KEYS[5], 'unlocked', m[1], code, a, now)
end
return reply('ok', code_view(m[1], code, a, 0, redeem_limit(m[2], m[3])))

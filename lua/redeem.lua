-- Redeems an assigned code once more, within the book's limit. A live lock
-- must be presented by its token; redeeming releases it.
-- KEYS[1] meta hash  KEYS[2] assigned hash  KEYS[3] lock key  KEYS[4] locks zset
-- KEYS[5] events stream  KEYS[6] idempotency list (optional)
-- ARGV[1] code  ARGV[2] user id  ARGV[3] lock token ('' for none)
-- ARGV[4] request fingerprint  ARGV[5] idempotency ttl (ms)
-- Returns {'ok'|'replayed', code view..., redemptionsLeft (-1: no limit)} or
-- {error status, detail...}.
local replay = idem_replay(KEYS[6], ARGV[4])
if replay then return replay end
local code, user, token = ARGV[1], ARGV[2], ARGV[3]
local m = redis.call('HMGET', KEYS[1], 'id', 'validFrom', 'validUntil',
  'multipleRedeemsAllowed', 'maxRedeemsPerCode')
if not m[1] then return {'book_not_found'} end
local a = read_assignment(KEYS[2], code)
if not a then return {'not_assigned'} end
if a.owner ~= user then return {'not_owner'} end
-- A used-up code says so whenever asked (it holds no lock: redeeming
-- released it, and a used-up code cannot be locked).
local limit = redeem_limit(m[4], m[5])
if limit >= 0 and a.times >= limit then return {'redeemed', a.times} end
local now = now_ms()
if outside_window(m[2], m[3], now) then return {'book_not_active'} end
local held = redis.call('GET', KEYS[3])
if held and held ~= token then return {'locked', live_lock_until(KEYS[4], KEYS[3], code, now)} end
if held then
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[4], code)
else
  -- A lock of this code that ran out, not yet recorded: recorded first, so
  -- the trail tells a redemption under a lock from one after it ended.
  record_own_ended_lock(KEYS[2], KEYS[4], KEYS[5], m[1], code, a)
end
a.times = a.times + 1
a.last = now
a.v = a.v + 1
write_assignment(KEYS[2], code, a)
redis.call('HINCRBY', KEYS[1], 'redeemed', 1)
redis.call('HSET', KEYS[1], 'updatedAt', now)
emit_code(KEYS[5], 'redeemed', m[1], code, a, now)
local left = -1
if limit >= 0 then left = limit - a.times end
local result = reply('ok', code_view(m[1], code, a, 0, limit), left)
idem_store(KEYS[6], ARGV[4], ARGV[5], result)
return result

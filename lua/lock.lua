-- Locks an assigned code for its owner for a while (SET NX PX: the lock
-- expires by itself). Also records a few locks of this book that expired
-- (the writer's sweep, expire_locks.lua, records the rest).
-- KEYS[1] meta hash  KEYS[2] assigned hash  KEYS[3] lock key  KEYS[4] locks zset
-- KEYS[5] events stream  KEYS[6] idempotency list (optional)
-- ARGV[1] code  ARGV[2] user id  ARGV[3] new lock token  ARGV[4] ttl ms ('' = book default)
-- ARGV[5] request fingerprint  ARGV[6] idempotency ttl (ms)
-- Returns {'ok'|'replayed', code view..., lockToken} or {error status, detail...}.
-- A replay returns the first answer, token included: a checkout whose answer
-- was lost can still redeem with its lock.
local replay = idem_replay(KEYS[6], ARGV[5])
if replay then return replay end
local code, user, token = ARGV[1], ARGV[2], ARGV[3]
local m = redis.call('HMGET', KEYS[1], 'id', 'validFrom', 'validUntil', 'lockTtlMs',
  'multipleRedeemsAllowed', 'maxRedeemsPerCode')
if not m[1] then return {'book_not_found'} end
local a = read_assignment(KEYS[2], code)
if not a then return {'not_assigned'} end
if a.owner ~= user then return {'not_owner'} end
-- A used-up code says so whenever asked; the window matters only to what
-- could still happen.
local limit = redeem_limit(m[5], m[6])
if limit >= 0 and a.times >= limit then return {'redeemed', a.times} end
local now = now_ms()
if outside_window(m[2], m[3], now) then return {'book_not_active'} end
local ttl = tonumber(ARGV[4]) or tonumber(m[4])
-- A lock ends when the book does: after validUntil its token could redeem
-- nothing, so lockedUntil never promises more.
local until_book = tonumber(m[3])
if until_book and now + ttl > until_book then ttl = until_book - now end
local until_ms = now + ttl
-- PXAT, not PX: the key ends exactly when the locks zset says. PX counts
-- from the moment SET runs, a millisecond after `now` at times, and a sweep
-- that saw the end pass would then record a lock whose token still redeems.
if not redis.call('SET', KEYS[3], token, 'NX', 'PXAT', until_ms) then
  return {'locked', live_lock_until(KEYS[4], KEYS[3], code, now)}
end

-- Expired locks stay in the zset until recorded: this code's earlier lock
-- (the NX above proves it is gone) and a few of the book's others.
record_own_ended_lock(KEYS[2], KEYS[4], KEYS[5], m[1], code, a)
record_expired_locks(KEYS[2], KEYS[4], KEYS[5], m[1], now, 16)

a.v = a.v + 1
write_assignment(KEYS[2], code, a)
redis.call('ZADD', KEYS[4], until_ms, code)
emit_code(KEYS[5], 'locked', m[1], code, a, now, 'until', until_ms)
local result = reply('ok', code_view(m[1], code, a, until_ms, limit), token)
idem_store(KEYS[6], ARGV[5], ARGV[6], result)
return result

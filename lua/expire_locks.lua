-- Records locks of a book that ran out: the writer runs it for books where a
-- lock may have ended, so an expiry reaches Postgres even when no later lock
-- or redeem in the book comes to record it (lock.lua and redeem.lua also do).
-- KEYS[1] meta hash  KEYS[2] assigned hash  KEYS[3] locks zset  KEYS[4] events stream
-- ARGV[1] how many expiries to record at most
-- Returns {the number recorded (ARGV[1]: there may be more),
--          ms until the next lock left ends (-1: none left)}.
local id = redis.call('HGET', KEYS[1], 'id')
if not id then return {0, -1} end
local now = now_ms()
local recorded = record_expired_locks(KEYS[2], KEYS[3], KEYS[4], id, now, tonumber(ARGV[1]))
local next_lock = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if #next_lock == 0 then return {recorded, -1} end
return {recorded, math.max(0, tonumber(next_lock[2]) - now)}

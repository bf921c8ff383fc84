-- Records locks of a book that ran out: the writer runs it for every book
-- now and then, so an expiry reaches Postgres even when no later lock or
-- redeem in the book comes to record it (lock.lua and redeem.lua also do).
-- KEYS[1] meta hash  KEYS[2] assigned hash  KEYS[3] locks zset  KEYS[4] events stream
-- ARGV[1] how many expiries to record at most
-- Returns the number recorded (ARGV[1]: there may be more).
local id = redis.call('HGET', KEYS[1], 'id')
if not id then return 0 end
return record_expired_locks(KEYS[2], KEYS[3], KEYS[4], id, now_ms(), tonumber(ARGV[1]))

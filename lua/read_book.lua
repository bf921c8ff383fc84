-- Reads a book's settings and live counts in one consistent snapshot.
-- KEYS[1] meta hash  KEYS[2] free set  KEYS[3] locks zset
-- ARGV none
-- Returns {'ok', available, locked, field, value, ...} or {'book_not_found'}.
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then return {'book_not_found'} end
local now = now_ms()
local out = {'ok', redis.call('SCARD', KEYS[2]),
  redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')}
for _, value in ipairs(meta) do out[#out + 1] = value end
return out

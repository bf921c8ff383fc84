-- Creates a book's meta hash and announces it in the book's outbox.
-- KEYS[1] meta hash    KEYS[2] events stream
-- ARGV[1] book id      ARGV[2..] field, value pairs of the book's settings
-- Returns {'ok', createdAtMs} or {'exists'}.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
local now = now_ms()
local book_id = ARGV[1]
redis.call('HSET', KEYS[1], 'id', book_id, unpack(ARGV, 2))
redis.call('HSET', KEYS[1], 'createdAt', now, 'updatedAt', now,
  'total', 0, 'assigned', 0, 'redeemed', 0, 'v', 1)
emit(KEYS[2], 'book_created', book_id, '', '', now, 1)
return {'ok', now}

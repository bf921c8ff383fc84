-- Creates a book's meta hash and announces it in the book's outbox. Run again
-- for the same book (a create's retry, books.py), it changes nothing.
-- KEYS[1] meta hash    KEYS[2] events stream
-- ARGV[1] book id      ARGV[2..] field, value pairs of the book's settings
-- Returns {'ok', createdAtMs}, or {'exists'} when the meta is another book's.
local book_id = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'id') ~= book_id then return {'exists'} end
  return {'ok', tonumber(redis.call('HGET', KEYS[1], 'createdAt'))}
end
local now = now_ms()
redis.call('HSET', KEYS[1], 'id', book_id, unpack(ARGV, 2))
redis.call('HSET', KEYS[1], 'createdAt', now, 'updatedAt', now,
  'total', 0, 'assigned', 0, 'redeemed', 0, 'v', 1)
emit(KEYS[2], 'book_created', book_id, '', '', now, 1)
return {'ok', now}

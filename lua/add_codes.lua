-- Adds claimed codes to a book's free set, skipping codes the book already has.
-- KEYS[1] meta hash  KEYS[2] free set  KEYS[3] assigned hash  KEYS[4] events stream
-- ARGV[1..] codes (already claimed for this book in the directory)
-- Returns {'ok', flags} with one character per code: 'a' added, 'd' already in
-- the book; or {'book_not_found'}.
local book_id = redis.call('HGET', KEYS[1], 'id')
if not book_id then return {'book_not_found'} end
local flags, added = {}, 0
for i = 1, #ARGV do
  local code = ARGV[i]
  if redis.call('HEXISTS', KEYS[3], code) == 0 and redis.call('SADD', KEYS[2], code) == 1 then
    flags[i] = 'a'
    added = added + 1
  else
    flags[i] = 'd'
  end
end
if added > 0 then
  local now = now_ms()
  redis.call('HINCRBY', KEYS[1], 'total', added)
  redis.call('HSET', KEYS[1], 'updatedAt', now)
  emit(KEYS[4], 'codes_added', book_id, '', '', now, 0, 'count', added)
end
return {'ok', table.concat(flags)}

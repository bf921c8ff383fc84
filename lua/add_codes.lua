-- Adds claimed codes to a book's free set, skipping codes the book already has.
-- KEYS[1] meta hash  KEYS[2] free set  KEYS[3] assigned hash  KEYS[4] events stream
-- ARGV[1..] codes (distinct, already claimed for this book in the directory)
-- Returns {'ok', flags} with one character per code: 'a' added, 'd' already in
-- the book (free or handed out); or {'book_not_found'}.
-- Works a slice of codes at a time (HMGET, SMISMEMBER, one SADD), not a
-- command per code.
local book_id = redis.call('HGET', KEYS[1], 'id')
if not book_id then return {'book_not_found'} end
local flags, added = {}, 0
for first = 1, #ARGV, UNPACK_MAX do
  local last = math.min(first + UNPACK_MAX - 1, #ARGV)
  local held = redis.call('HMGET', KEYS[3], unpack(ARGV, first, last))
  local free = redis.call('SMISMEMBER', KEYS[2], unpack(ARGV, first, last))
  local new, n = {}, 0
  for i = first, last do
    local j = i - first + 1
    if held[j] or free[j] == 1 then
      flags[i] = 'd'
    else
      flags[i] = 'a'
      n = n + 1
      new[n] = ARGV[i]
    end
  end
  -- SADD's own count keeps `total` exact even if a caller repeated a code.
  if n > 0 then added = added + redis.call('SADD', KEYS[2], unpack(new)) end
end
if added > 0 then
  local now = now_ms()
  redis.call('HINCRBY', KEYS[1], 'total', added)
  redis.call('HSET', KEYS[1], 'updatedAt', now)
  emit(KEYS[4], 'codes_added', book_id, '', '', now, 0, 'count', added)
end
return {'ok', table.concat(flags)}

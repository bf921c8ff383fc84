-- Claims codes for a book in the directory (a code belongs to one book, forever).
-- All KEYS share one directory hash tag, so a bulk load needs one call per tag.
-- KEYS[1], KEYS[2], ...: directory bucket hashes
-- ARGV[1] book number, then for each key in KEYS order: a count n, then that
-- bucket's n codes (distinct).
-- Returns one character per code, in ARGV order: 'n' newly claimed, 's' already
-- this book's, 'o' owned by another book.
-- Per bucket, one HMGET reads the owners and one HSET claims the new codes:
-- a bulk load groups its codes by bucket so that these commands are few.
local book = ARGV[1]
local flags, count = {}, 0
local at = 2
for k = 1, #KEYS do
  local last_code = at + tonumber(ARGV[at])
  for first = at + 1, last_code, UNPACK_MAX do
    local last = math.min(first + UNPACK_MAX - 1, last_code)
    local owners = redis.call('HMGET', KEYS[k], unpack(ARGV, first, last))
    local new, n = {}, 0
    for i = first, last do
      local owner = owners[i - first + 1]
      count = count + 1
      if not owner then
        new[n + 1], new[n + 2] = ARGV[i], book
        n = n + 2
        flags[count] = 'n'
      elseif owner == book then
        flags[count] = 's'
      else
        flags[count] = 'o'
      end
    end
    if n > 0 then redis.call('HSET', KEYS[k], unpack(new)) end
  end
  at = last_code + 1
end
return table.concat(flags)

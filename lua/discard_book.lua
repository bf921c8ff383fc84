-- Undoes create_book for a create that failed before its book was usable
-- (books.py): removes the meta hash and the outbox stream, but only while
-- they are this book's and it holds no codes.
-- KEYS[1] meta hash    KEYS[2] events stream
-- ARGV[1] book id
-- Returns 1 when removed, 0 when there was nothing of this book's to remove.
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'total') ~= '0' then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1

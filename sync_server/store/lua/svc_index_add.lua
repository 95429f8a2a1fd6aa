-- Adds a service to the account's service index, in creation order.
-- KEYS[1]  the index (sorted set)           sync:{services}:index
-- KEYS[2]  the creation counter             sync:{services}:seq
-- ARGV[1]  the service SID
-- Returns  the service's sequence number (the existing one when it was indexed already)
local seq = redis.call('ZSCORE', KEYS[1], ARGV[1])
if seq then return tonumber(seq) end
seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
return seq

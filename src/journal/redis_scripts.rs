//! The Lua scripts of the Redis journal. Each one is a single atomic step on the queue, so a
//! replica that dies between two calls never leaves an event half moved.
//!
//! Keys the scripts build themselves (event hashes, dead deliveries) start with the same
//! `{prefix}` hash tag as the declared keys, so on Redis Cluster they live in the same slot (the
//! pattern queue libraries such as BullMQ use).
//!
//! Each script does its reads and checks before its first write: when Redis refuses a write
//! (out of memory, read-only replica) the first write fails and nothing has changed.

/// Stores one delivery: its events (a hash each plus a stream entry, and a place in the pending
/// set) and then the delivery marker that refuses a second copy. The marker is written last, so
/// a failure half-way lets Attio's retry store the delivery again instead of being answered
/// "duplicate" for a partial write.
///
/// Each new event also takes the next history sequence number and a place in the history index
/// (newest last), in the same script: keeping history costs no second round trip.
///
/// KEYS: 1 delivery marker, 2 stream, 3 pending set, 4 history index, 5 history sequence,
/// 6.. event hashes (one per event).
/// ARGV: 1 marker TTL in ms, 2 received ms, 3 count of shared field/value items, then those
/// items, then for each event: id, index, event_type, raw.
/// Returns -1 for a known delivery, else the backlog after the append.
pub(crate) const APPEND: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
    return -1
end
local shared_count = tonumber(ARGV[3])
local shared = {}
for i = 4, 3 + shared_count do
    shared[#shared + 1] = ARGV[i]
end
local base = 4 + shared_count
for e = 0, #KEYS - 6 do
    local key = KEYS[6 + e]
    local at = base + e * 4
    -- An event already stored (a partial earlier attempt, or a key reused after the marker
    -- expired) keeps its state: it is queued, retrying or dead already.
    if redis.call('EXISTS', key) == 0 then
        local id = ARGV[at]
        redis.call('HSET', key, 'id', id, 'index', ARGV[at + 1], 'event_type', ARGV[at + 2],
            'raw', ARGV[at + 3], 'attempts', '0', 'sinks_done', '[]', 'sink_attempts', '{}',
            'state', 'pending', unpack(shared))
        local entry = redis.call('XADD', KEYS[2], '*', 'id', id)
        local seq = redis.call('INCR', KEYS[5])
        redis.call('HSET', key, 'entry', entry, 'seq', seq)
        redis.call('ZADD', KEYS[3], ARGV[2], id)
        redis.call('ZADD', KEYS[4], seq, id)
    end
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return redis.call('ZCARD', KEYS[3])
"#;

/// Hands out events to one consumer: first entries other replicas left unacknowledged for longer
/// than the lease (XAUTOCLAIM), then retries whose time has come (hidden for a lease while this
/// consumer works on them), then new entries (XREADGROUP). Entries whose event is gone or no
/// longer queued in the stream are acknowledged and deleted on the way.
///
/// KEYS: 1 stream, 2 retry schedule, 3 pending set.
/// ARGV: 1 group, 2 consumer, 3 now ms, 4 lease ms, 5 limit, 6 reclaim cursor ('' = skip the
/// reclaim this time), 7 event key prefix, 8 hidden-until ms for claimed retries.
/// Returns {next reclaim cursor ('' when skipped), backlog, {event hash as field/value list...}}.
pub(crate) const DUE: &str = r#"
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local limit = tonumber(ARGV[5])
local prefix = ARGV[7]
local out = {}

local function forget(entry)
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
end

local function load(id)
    local fields = redis.call('HGETALL', prefix .. id)
    for i = 1, #fields, 2 do
        if fields[i] == 'state' then
            if fields[i + 1] ~= 'pending' then
                return false
            end
            out[#out + 1] = fields
            return true
        end
    end
    return false
end

local function from_stream(message)
    local entry, body = message[1], message[2]
    local id = nil
    if body then
        for i = 1, #body, 2 do
            if body[i] == 'id' then
                id = body[i + 1]
            end
        end
    end
    -- The event hash names the one entry that queues it; any other entry is stale.
    if not id or redis.call('HGET', prefix .. id, 'entry') ~= entry or not load(id) then
        forget(entry)
    end
end

local cursor = ''
if ARGV[6] ~= '' then
    local claimed = redis.call('XAUTOCLAIM', stream, group, consumer, ARGV[4], ARGV[6],
        'COUNT', limit)
    cursor = claimed[1]
    for _, message in ipairs(claimed[2]) do
        from_stream(message)
    end
end

local remaining = limit - #out
if remaining > 0 then
    local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, remaining)
    for _, id in ipairs(ids) do
        if load(id) then
            redis.call('ZADD', KEYS[2], ARGV[8], id)
        else
            redis.call('ZREM', KEYS[2], id)
        end
    end
end

remaining = limit - #out
if remaining > 0 then
    local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', remaining,
        'STREAMS', stream, '>')
    if read then
        for _, message in ipairs(read[1][2]) do
            from_stream(message)
        end
    end
end

return {cursor, redis.call('ZCARD', KEYS[3]), out}
"#;

/// Shared head of the outcome scripts: only a pending event is touched, and its stream entry (if
/// it is queued there) is acknowledged and deleted.
///
/// KEYS: 1 event hash, 2 stream, 3 retry schedule, 4 pending set, 5 dead letters.
/// ARGV: 1 group, 2 event id, 3 score (next attempt or time of death, ms), 4.. field/value items
/// to set on the event.
///
/// The per-sink maps `sink_errors` and `sinks_delivered` are merged into what the event holds
/// (a sink keeps its last error and the time it took the event across attempts).
const TAKE_OUT: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then
    return -1
end
local function merged(name, value)
    local into = {}
    local old = redis.call('HGET', KEYS[1], name)
    if old then
        local ok, decoded = pcall(cjson.decode, old)
        if ok and type(decoded) == 'table' then
            into = decoded
        end
    end
    local ok, added = pcall(cjson.decode, value)
    if ok and type(added) == 'table' then
        for k, v in pairs(added) do
            into[k] = v
        end
    end
    if next(into) == nil then
        return '{}'
    end
    return cjson.encode(into)
end
local fields = {'entry', ''}
for i = 4, #ARGV, 2 do
    local value = ARGV[i + 1]
    if ARGV[i] == 'sink_errors' or ARGV[i] == 'sinks_delivered' then
        value = merged(ARGV[i], value)
    end
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = value
end
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry and entry ~= '' then
    redis.call('XACK', KEYS[2], ARGV[1], entry)
    redis.call('XDEL', KEYS[2], entry)
end
"#;

/// The event is done: it leaves the queue and stays, delivered, in the history for `ARGV[3]`
/// ms (`storage.history`). Returns -1 when it was not pending, else the backlog.
pub(crate) fn complete() -> String {
    format!(
        "{TAKE_OUT}
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
fields[#fields + 1] = 'state'
fields[#fields + 1] = 'delivered'
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('ZCARD', KEYS[4])"
    )
}

/// The event waits for a later attempt in the retry schedule (out of the stream, so no other
/// replica reclaims it before its time). Returns -1 when it was not pending, else the backlog.
pub(crate) fn reschedule() -> String {
    format!(
        "{TAKE_OUT}
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return redis.call('ZCARD', KEYS[4])"
    )
}

/// The event leaves the queue and joins the dead letters. Returns -1 when it was not pending,
/// else the backlog.
pub(crate) fn dead_letter() -> String {
    format!(
        "{TAKE_OUT}
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
fields[#fields + 1] = 'state'
fields[#fields + 1] = 'dead'
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[2])
return redis.call('ZCARD', KEYS[4])"
    )
}

/// A page of dead letters, oldest first, each as its event hash (a field/value list) without
/// the event JSON.
///
/// KEYS: 1 dead letters. ARGV: 1 first rank, 2 last rank, 3 event key prefix.
pub(crate) const DEAD_LETTERS: &str = r#"
local names = {'event_type', 'delivery_key', 'received_at', 'attempts', 'last_error',
    'failed_sinks', 'dead_at', 'sinks_done', 'sink_attempts'}
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])) do
    local values = redis.call('HMGET', ARGV[3] .. id, unpack(names))
    local row = {'id', id}
    for i, name in ipairs(names) do
        row[#row + 1] = name
        row[#row + 1] = values[i]
    end
    out[#out + 1] = row
end
return out
"#;

/// Puts dead letters back in the queue, due at once, with attempts reset and the given sinks
/// done. An event that is no longer a dead letter (replayed meanwhile) is left alone.
///
/// KEYS: 1 dead letters, 2 retry schedule, 3 pending set. ARGV: 1 event key prefix, 2 now ms,
/// then triples of event id, sinks done (JSON) and the state it may be replayed from (`dead`,
/// or `delivered` for a delivered event). Returns the ids put back.
pub(crate) const REPLAY: &str = r#"
local replayed = {}
for i = 3, #ARGV, 3 do
    local id = ARGV[i]
    local key = ARGV[1] .. id
    local state = redis.call('HGET', key, 'state')
    if state == 'dead' or (state == 'delivered' and ARGV[i + 2] == 'delivered') then
        redis.call('HSET', key, 'state', 'pending', 'attempts', '0', 'sink_attempts', '{}',
            'failed_sinks', '[]', 'sinks_done', ARGV[i + 1], 'entry', '')
        redis.call('HDEL', key, 'dead_at', 'delivered_at')
        -- A delivered event was kept for the history window only; pending, it is kept.
        redis.call('PERSIST', key)
        redis.call('ZREM', KEYS[1], id)
        redis.call('ZADD', KEYS[2], ARGV[2], id)
        redis.call('ZADD', KEYS[3], redis.call('HGET', key, 'received_ms') or ARGV[2], id)
        replayed[#replayed + 1] = id
    end
end
return replayed
"#;

/// Keeps a signed body that is not a delivery.
///
/// KEYS: 1 sequence counter, 2 dead deliveries (sorted by sequence). ARGV: 1 hash key prefix,
/// 2.. field/value items. Returns the sequence number.
pub(crate) const APPEND_MALFORMED: &str = r#"
local seq = redis.call('INCR', KEYS[1])
local fields = {}
for i = 2, #ARGV do
    fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', ARGV[1] .. seq, 'seq', seq, unpack(fields))
redis.call('ZADD', KEYS[2], seq, seq)
return seq
"#;

/// Forgets consumers (replicas that are gone) with nothing pending and no activity for a while.
/// XAUTOCLAIM already moved their entries; this only keeps XINFO readable.
///
/// KEYS: 1 stream. ARGV: 1 group, 2 this consumer, 3 idle ms. Returns how many were removed.
pub(crate) const FORGET_CONSUMERS: &str = r#"
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(consumers) ~= 'table' or consumers.err then
    return 0
end
local removed = 0
for _, consumer in ipairs(consumers) do
    local name, pending, idle = nil, nil, nil
    for i = 1, #consumer, 2 do
        if consumer[i] == 'name' then
            name = consumer[i + 1]
        elseif consumer[i] == 'pending' then
            pending = consumer[i + 1]
        elseif consumer[i] == 'idle' then
            idle = consumer[i + 1]
        end
    end
    if name and name ~= ARGV[2] and pending == 0 and idle and idle > tonumber(ARGV[3]) then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
        removed = removed + 1
    end
end
return removed
"#;

/// Gives back the entries this consumer still holds (on shutdown), so other replicas take them
/// at once instead of after the lease: each is re-queued as a new entry at the end of the stream.
///
/// KEYS: 1 stream. ARGV: 1 group, 2 this consumer, 3 event key prefix, 4 most entries.
/// Returns how many events were given back.
pub(crate) const HAND_BACK: &str = r#"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[4]), ARGV[2])
local given = 0
for _, item in ipairs(pending) do
    local entry = item[1]
    local message = redis.call('XRANGE', KEYS[1], entry, entry)
    redis.call('XACK', KEYS[1], ARGV[1], entry)
    redis.call('XDEL', KEYS[1], entry)
    if message[1] then
        local body = message[1][2]
        for i = 1, #body, 2 do
            if body[i] == 'id' then
                local key = ARGV[3] .. body[i + 1]
                if redis.call('HGET', key, 'entry') == entry then
                    local fresh = redis.call('XADD', KEYS[1], '*', 'id', body[i + 1])
                    redis.call('HSET', key, 'entry', fresh)
                    given = given + 1
                end
            end
        end
    end
end
return given
"#;

/// A batch of the history index, newest first, from below a cursor: for each event its
/// sequence number and the fields lists and filters use (never the event JSON). Filtering is
/// done by the caller, with the rules shared by both journals.
///
/// KEYS: 1 history index. ARGV: 1 cursor (exclusive highest sequence, or '+inf'), 2 batch
/// size, 3 event key prefix. Returns {seq, field values...} per event still kept.
pub(crate) const HISTORY_BATCH: &str = r#"
local names = {'id', 'event_type', 'state', 'attempts', 'received_at', 'received_ms', 'object',
    'list', 'delivery_key', 'last_error', 'record_id', 'sinks_done', 'failed_sinks',
    'sink_attempts'}
local max = ARGV[1]
if max ~= '+inf' then
    max = '(' .. max
end
local found = redis.call('ZREVRANGEBYSCORE', KEYS[1], max, '-inf', 'WITHSCORES', 'LIMIT', 0,
    tonumber(ARGV[2]))
local out = {}
for i = 1, #found, 2 do
    local values = redis.call('HMGET', ARGV[3] .. found[i], unpack(names))
    local row = {found[i + 1]}
    for j = 1, #names do
        row[#row + 1] = values[j] or false
    end
    out[#out + 1] = row
end
return out
"#;

/// Deletes history older than its window, oldest first: index entries whose event expired,
/// delivered events received before `ARGV[2]`, and (when `ARGV[3]` is not '') dead letters that
/// died before it. Events kept (pending, or dead letters still in their window) are stepped
/// over: the caller passes how many it stepped over so far as the offset. Stops at the first
/// event received after `ARGV[2]`.
///
/// KEYS: 1 history index, 2 dead letters. ARGV: 1 event key prefix, 2 history cutoff (received
/// ms), 3 dead letter cutoff (RFC 3339, or ''), 4 batch size, 5 offset.
/// Returns {events deleted, events kept, 1 when the scan reached recent events or the end}.
pub(crate) const PURGE_HISTORY: &str = r#"
local deleted, kept = 0, 0
local first = tonumber(ARGV[5])
local ids = redis.call('ZRANGE', KEYS[1], first, first + tonumber(ARGV[4]) - 1)
for _, id in ipairs(ids) do
    local key = ARGV[1] .. id
    local values = redis.call('HMGET', key, 'state', 'received_ms', 'dead_at')
    local state, received = values[1], tonumber(values[2] or '0')
    if not state then
        redis.call('ZREM', KEYS[1], id)
        deleted = deleted + 1
    elseif received >= tonumber(ARGV[2]) then
        return {deleted, kept, 1}
    elseif state == 'delivered' then
        redis.call('DEL', key)
        redis.call('ZREM', KEYS[1], id)
        deleted = deleted + 1
    elseif state == 'dead' and ARGV[3] ~= '' and values[3] and values[3] < ARGV[3] then
        redis.call('DEL', key)
        redis.call('ZREM', KEYS[1], id)
        redis.call('ZREM', KEYS[2], id)
        deleted = deleted + 1
    else
        kept = kept + 1
    end
end
if #ids < tonumber(ARGV[4]) then
    return {deleted, kept, 1}
end
return {deleted, kept, 0}
"#;

/// Deletes dead letters that died before a time, whenever they were received (their window,
/// `storage.dead_letter_history`, may be shorter than the history's).
///
/// KEYS: 1 dead letters, 2 history. ARGV: 1 event hash key prefix, 2 died before (unix ms), 3 most
/// per call. Returns how many were deleted (fewer than the most: nothing older is left).
pub(crate) const PURGE_DEAD: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0,
    tonumber(ARGV[3]))
for _, id in ipairs(ids) do
    local key = ARGV[1] .. id
    -- Checked here, atomically: a replay may have taken it back to pending meanwhile.
    local state = redis.call('HGET', key, 'state')
    if state == 'dead' or not state then
        redis.call('DEL', key)
        redis.call('ZREM', KEYS[2], id)
    end
    redis.call('ZREM', KEYS[1], id)
end
return #ids
"#;

/// Deletes unparsed deliveries received before a time, oldest first (their ids grow with the
/// time received, so the first one kept ends the purge).
///
/// KEYS: 1 dead deliveries. ARGV: 1 hash key prefix, 2 received before (RFC 3339, as stored),
/// 3 most per call. Returns {deleted, finished (1) or not (0)}.
pub(crate) const PURGE_UNPARSED: &str = r#"
local seqs = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
local deleted = 0
for _, seq in ipairs(seqs) do
    local key = ARGV[1] .. seq
    local received = redis.call('HGET', key, 'received_at')
    if received and received >= ARGV[2] then
        return {deleted, 1}
    end
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], seq)
    deleted = deleted + 1
end
if #seqs < tonumber(ARGV[3]) then
    return {deleted, 1}
end
return {deleted, 0}
"#;

//! The Lua scripts that write a catalog namespace. A script runs atomically on the Redis node
//! (no other command runs in between; replicas and the AOF receive its effects as one
//! MULTI/EXEC), so a batch is all-or-nothing: every check comes before the first write, and the
//! `#!lua` shebang (Redis >= 7.0) makes Redis refuse the whole script up front when it is out of
//! memory instead of failing a write half-way. Each write batch increments the epoch and
//! publishes `EPOCH <len>:<id>...` on the invalidation channel in the same script, so the
//! message can never be lost while the write lands, nor sent for a write that did not.

/// Lua checks both writing scripts make before their first write, on the locals `index` and
/// `epoch`: the index is a hash (or absent) and the epoch a number (or absent), so that no
/// command of the script can fail after it started writing.
macro_rules! check_index_and_epoch {
    () => {
        r#"local t = redis.call('TYPE', index)['ok']
if t ~= 'hash' and t ~= 'none' then
  return redis.error_reply('LAVICLAYOUT the index key holds a ' .. t)
end
local e = redis.call('GET', epoch)
if e and not tonumber(e) then
  return redis.error_reply('LAVICLAYOUT the epoch key is not a number')
end
"#
    };
}

/// Creates the namespace's metadata if missing; returns it as a flat field/value list.
/// KEYS: meta. ARGV: fingerprint, form, width, vision_width, format, instance.
pub(crate) const ENSURE: &str = r#"#!lua
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'form', ARGV[2], 'width', ARGV[3],
    'vision_width', ARGV[4], 'format', ARGV[5], 'instance', ARGV[6])
end
return redis.call('HGETALL', KEYS[1])
"#;

/// Writes a batch of items. KEYS: meta, index, epoch, then one item key per item.
/// ARGV: channel, fingerprint, form, width, vision_width, format, instance, n, then n ids,
/// n values, n digests, then the message's id list. Returns {epoch, item count}.
pub(crate) const WRITE: &str = concat!(
    "#!lua\nlocal meta, index, epoch = KEYS[1], KEYS[2], KEYS[3]\n",
    check_index_and_epoch!(),
    r#"local fp = redis.call('HGET', meta, 'fingerprint')
if fp then
  if fp ~= ARGV[2] or redis.call('HGET', meta, 'form') ~= ARGV[3] or redis.call('HGET', meta, 'width') ~= ARGV[4] then
    return redis.error_reply('LAVICLAYOUT the namespace stores another form or width')
  end
else
  redis.call('HSET', meta, 'fingerprint', ARGV[2], 'form', ARGV[3], 'width', ARGV[4],
    'vision_width', ARGV[5], 'format', ARGV[6], 'instance', ARGV[7])
end
local n = tonumber(ARGV[8])
for i = 1, n do
  redis.call('SET', KEYS[3 + i], ARGV[8 + n + i])
  redis.call('HSET', index, ARGV[8 + i], ARGV[8 + 2 * n + i])
end
local now = redis.call('INCR', epoch)
redis.call('PUBLISH', ARGV[1], now .. ' ' .. ARGV[9 + 3 * n])
return {now, redis.call('HLEN', index)}
"#
);

/// Deletes items. KEYS: index, epoch, then one item key per id. ARGV: channel, n, then n ids,
/// then the message's id list. Returns {epoch (0 when nothing existed), removed, item count}.
pub(crate) const DELETE: &str = concat!(
    "#!lua\nlocal index, epoch = KEYS[1], KEYS[2]\n",
    check_index_and_epoch!(),
    r#"local n = tonumber(ARGV[2])
local removed, touched = 0, 0
for i = 1, n do
  local r = redis.call('HDEL', index, ARGV[2 + i])
  removed = removed + r
  touched = touched + r + redis.call('DEL', KEYS[2 + i])
end
local now = 0
if touched > 0 then
  now = redis.call('INCR', epoch)
  redis.call('PUBLISH', ARGV[1], now .. ' ' .. ARGV[3 + n])
end
return {now, removed, redis.call('HLEN', index)}
"#
);

/// The id list of an invalidation message: `<byte length>:<id>` for each id (binary-safe).
pub(crate) fn id_list<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for id in ids {
        out.extend_from_slice(id.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// Parses an invalidation message `EPOCH <len>:<id>...`; `None` when malformed.
pub(crate) fn parse_message(msg: &[u8]) -> Option<(u64, Vec<String>)> {
    let sp = msg.iter().position(|&b| b == b' ')?;
    let epoch = std::str::from_utf8(&msg[..sp]).ok()?.parse().ok()?;
    let mut rest = &msg[sp + 1..];
    let mut ids = Vec::new();
    while !rest.is_empty() {
        let colon = rest.iter().position(|&b| b == b':')?;
        let n: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
        let body = rest.get(colon + 1..colon + 1 + n)?;
        ids.push(String::from_utf8(body.to_vec()).ok()?);
        rest = &rest[colon + 1 + n..];
    }
    Some((epoch, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_roundtrip_any_id() {
        let ids = ["B01", "with space", "colon:in:id", "12:34", "ünïcode", ""];
        let mut msg = b"42 ".to_vec();
        msg.extend(id_list(ids.iter().copied()));
        let (e, got) = parse_message(&msg).unwrap();
        assert_eq!(e, 42);
        assert_eq!(got, ids);
        assert_eq!(parse_message(b"7 ").unwrap(), (7, vec![]));
        for bad in [&b"x 1:a"[..], b"7 5:abc", b"7 a:b", b"7"] {
            assert!(parse_message(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

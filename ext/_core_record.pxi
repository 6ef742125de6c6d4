# Included by _core.pyx (one module): The record layout: reading a header in place, packing and unpacking records and items.

# -- record layout ----------------------------------------------------------------

cdef struct Header:
    uint8_t flags
    uint32_t tag_count
    uint64_t sid
    int64_t created
    int64_t updated
    int64_t expires
    Py_ssize_t key_start
    Py_ssize_t type_start
    Py_ssize_t tags_start
    Py_ssize_t payload_start


cdef inline uint32_t _u32(const uint8_t* p) noexcept nogil:
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t _u64(const uint8_t* p) noexcept nogil:
    return <uint64_t>_u32(p) | (<uint64_t>_u32(p + 4) << 32)


cdef inline uint64_t _be64(const uint8_t* p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef inline void _put_u32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


cdef inline void _put_u64(uint8_t* p, uint64_t v) noexcept nogil:
    _put_u32(p, <uint32_t>v)  # the low half
    _put_u32(p + 4, <uint32_t>(v >> 32))


cdef int _read_header(bytes record, Header* h) except -1:
    cdef Py_ssize_t size = PyBytes_GET_SIZE(record)
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(record)
    cdef uint32_t reserved
    if size < _HEADER:
        raise corrupt(f"{size} bytes is shorter than the {_HEADER}-byte header")
    if p[0] != RECORD_FORMAT_VERSION:
        raise corrupt(f"unknown format version {p[0]}")
    reserved = <uint32_t>p[2] | (<uint32_t>p[3] << 8)
    if (p[1] & ~_FLAG_EXPIRES) or reserved:
        raise corrupt(f"unknown flags {p[1]:#x}/{reserved:#x}")
    cdef uint64_t key_len = _u32(p + 56)
    cdef uint64_t type_len = _u32(p + 60)
    cdef uint64_t tags_len = _u32(p + 64)
    if <uint64_t>_HEADER + key_len + type_len + tags_len > <uint64_t>size:
        raise corrupt("section lengths run past the end")
    h.flags = p[1]
    h.tag_count = _u32(p + 4)
    h.sid = _u64(p + 8)
    h.created = <int64_t>_u64(p + 32)
    h.updated = <int64_t>_u64(p + 40)
    h.expires = <int64_t>_u64(p + 48)
    h.key_start = _HEADER
    h.type_start = _HEADER + <Py_ssize_t>key_len
    h.tags_start = h.type_start + <Py_ssize_t>type_len
    h.payload_start = h.tags_start + <Py_ssize_t>tags_len
    return 0


cdef inline bytes _slice(bytes record, Py_ssize_t start, Py_ssize_t end):
    # Python slicing semantics: clamped to the record.
    cdef Py_ssize_t size = PyBytes_GET_SIZE(record)
    if start > size:
        start = size
    if end > size:
        end = size
    if end < start:
        end = start
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(record) + start, end - start)


cdef Py_ssize_t* _tag_spans(bytes record, const Header* h, Py_ssize_t* room, Py_ssize_t room_size) except NULL:
    """Check the tags section as the pure twin does and return (start, length) of each
    tag key and value, four numbers a tag: in ``room`` when it is big enough, else in
    memory the caller frees with PyMem_Free."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(record)
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(record)
    cdef Py_ssize_t pos = h.tags_start, key_len, value_len, i
    cdef Py_ssize_t count = h.tag_count
    cdef Py_ssize_t* spans = room
    if 8 * count > size:
        # Each tag takes at least 8 bytes: this walk fails before its end (a damaged
        # count), so it needs no room; it only has to fail the way the pure twin does.
        spans = NULL
    elif 4 * count > room_size:
        spans = <Py_ssize_t*>PyMem_Malloc(4 * count * sizeof(Py_ssize_t) + 1)
        if spans == NULL:
            raise MemoryError()
    try:
        for i in range(count):
            if pos + 4 > size:
                raise corrupt("tags section is truncated")
            key_len = _u32(p + pos)
            if spans != NULL:
                spans[4 * i] = pos + 4
                spans[4 * i + 1] = key_len
            pos += 4 + key_len
            if pos + 4 > size:
                raise corrupt("tags section is truncated")
            value_len = _u32(p + pos)
            if spans != NULL:
                spans[4 * i + 2] = pos + 4
                spans[4 * i + 3] = value_len
            pos += 4 + value_len
        if pos != h.payload_start:
            raise corrupt("tags section length does not match its tags")
    except BaseException:
        if spans != room and spans != NULL:
            PyMem_Free(spans)
        raise
    return spans  # never NULL here: a walk without room always fails above


cdef list _tag_pairs(bytes record, const Header* h):
    """The tags as (key, value) bytes pairs, in record order."""
    cdef Py_ssize_t room[256]
    cdef Py_ssize_t* spans = _tag_spans(record, h, room, 256)
    cdef Py_ssize_t i
    try:
        return [
            (_slice(record, spans[4 * i], spans[4 * i] + spans[4 * i + 1]),
             _slice(record, spans[4 * i + 2], spans[4 * i + 2] + spans[4 * i + 3]))
            for i in range(h.tag_count)
        ]
    finally:
        if spans != room:
            PyMem_Free(spans)


def pack_record(
    uint64_t sid,
    bytes uuid not None,
    int64_t created,
    int64_t updated,
    expires,
    bytes key not None,
    bytes content_type not None,
    tags,
    bytes payload not None,
):
    """Lay out one record. ``tags`` must already be sorted by key."""
    cdef list pairs = list(tags)
    return _pack(sid, PyBytes_AS_STRING(uuid), created, updated, expires, key, content_type, pairs, _tags_size(pairs), payload)


cdef Py_ssize_t _tags_size(list pairs) except -1:
    cdef Py_ssize_t size = 0
    cdef bytes tag_key, tag_value
    for tag_key, tag_value in pairs:
        size += 8 + PyBytes_GET_SIZE(tag_key) + PyBytes_GET_SIZE(tag_value)
    return size


cdef bytes _pack(
    uint64_t sid,
    const char* uuid,
    int64_t created,
    int64_t updated,
    object expires,
    bytes key,
    bytes content_type,
    list pairs,
    Py_ssize_t tags_len,
    bytes payload,
):
    cdef Py_ssize_t total, pos
    cdef bytes tag_key, tag_value, part
    total = _HEADER + PyBytes_GET_SIZE(key) + PyBytes_GET_SIZE(content_type) + tags_len + PyBytes_GET_SIZE(payload)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
    p[0] = RECORD_FORMAT_VERSION
    p[1] = _FLAG_EXPIRES if expires is not None else 0
    p[2] = 0
    p[3] = 0
    _put_u32(p + 4, <uint32_t>len(pairs))
    _put_u64(p + 8, sid)
    memcpy(p + 16, uuid, 16)
    _put_u64(p + 32, <uint64_t>created)
    _put_u64(p + 40, <uint64_t>updated)
    _put_u64(p + 48, <uint64_t>(<int64_t>expires if expires is not None else 0))
    _put_u32(p + 56, <uint32_t>PyBytes_GET_SIZE(key))
    _put_u32(p + 60, <uint32_t>PyBytes_GET_SIZE(content_type))
    _put_u32(p + 64, <uint32_t>tags_len)
    pos = _HEADER
    for part in (key, content_type):
        memcpy(p + pos, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part))
        pos += PyBytes_GET_SIZE(part)
    for tag_key, tag_value in pairs:
        _put_u32(p + pos, <uint32_t>PyBytes_GET_SIZE(tag_key))
        memcpy(p + pos + 4, PyBytes_AS_STRING(tag_key), PyBytes_GET_SIZE(tag_key))
        pos += 4 + PyBytes_GET_SIZE(tag_key)
        _put_u32(p + pos, <uint32_t>PyBytes_GET_SIZE(tag_value))
        memcpy(p + pos + 4, PyBytes_AS_STRING(tag_value), PyBytes_GET_SIZE(tag_value))
        pos += 4 + PyBytes_GET_SIZE(tag_value)
    memcpy(p + pos, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))
    return out


def pack_new(
    list key_bytes not None,
    list payloads not None,
    list data not None,
    bytes content_type not None,
    tags,
    expires,
    int64_t now,
    uint64_t first_sid,
    bytes uuids not None,
):
    """The records and items of new items saved together at ``now``, sharing one
    content type, tags and expiry: ids from ``first_sid`` up, each UUID (version 4)
    from 16 of the random bytes ``uuids``, each item's data as already decoded.
    Keys, content type and tags must be UTF-8 (they come checked).

    Raises:
        ValueError: the lists and ``uuids`` do not hold one of each per key.
    """
    cdef Py_ssize_t count = len(key_bytes), index
    if len(payloads) != count or len(data) != count or PyBytes_GET_SIZE(uuids) != 16 * count:
        raise ValueError("pack_new needs one payload, one value and 16 random bytes per key")
    cdef list pairs = list(tags)
    cdef Py_ssize_t tags_len = _tags_size(pairs)
    cdef uint8_t raw[16]
    cdef bytes key
    cdef list records = PyList_New(count), items = PyList_New(count)
    created = _datetime(now)  # shared: datetimes, the content type's text and the tags' are immutable
    expires_at = _datetime(<int64_t>expires) if expires is not None else None
    type_text = content_type.decode()
    cdef dict tag_texts = {tag_key.decode(): tag_value.decode() for tag_key, tag_value in pairs}
    for index in range(count):
        memcpy(raw, PyBytes_AS_STRING(uuids) + 16 * index, 16)
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        key = key_bytes[index]
        record = _pack(first_sid + index, <const char*>raw, now, now, expires, key, content_type, pairs, tags_len,
                       payloads[index])
        metadata = _blank(StorageMetadata)  # in the order of the dataclass fields
        _set(metadata, "id", _uuid(<const char*>raw))
        _set(metadata, "key", key.decode())
        _set(metadata, "content_type", type_text)
        _set(metadata, "created_at", created)
        _set(metadata, "updated_at", created)
        _set(metadata, "expires_at", expires_at)
        _set(metadata, "tags", tag_texts.copy())
        item = _blank(StorageItem)
        _set(item, "data", data[index])
        _set(item, "metadata", metadata)
        Py_INCREF(record)
        PyList_SET_ITEM(records, index, record)
        Py_INCREF(item)
        PyList_SET_ITEM(items, index, item)
    return records, items


def unpack_record(bytes record not None):
    """Split a record into its fields, checking every length.

    Raises:
        StorageCorruptionError: the bytes are not a version-1 record.
    """
    cdef Header h
    _read_header(record, &h)
    cdef list tags = _tag_pairs(record, &h)
    return RecordFields(
        h.sid,
        _slice(record, 16, 32),
        h.created,
        h.updated,
        h.expires if h.flags & _FLAG_EXPIRES else None,
        _slice(record, h.key_start, h.type_start),
        _slice(record, h.type_start, h.tags_start),
        tags,
        _slice(record, h.payload_start, PyBytes_GET_SIZE(record)),
    )


cdef object _datetime(int64_t micros):
    """The aware UTC datetime, built in C (civil-from-days, H. Hinnant's algorithm)."""
    cdef int64_t day = 86400000000
    cdef int64_t days = micros / day
    cdef int64_t rest = micros - days * day
    if rest < 0:  # floor, not C's truncation
        days -= 1
        rest += day
    cdef int64_t z = days + 719468
    cdef int64_t era = (z if z >= 0 else z - 146096) / 146097
    cdef int64_t doe = z - era * 146097
    cdef int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
    cdef int64_t year = yoe + era * 400
    cdef int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    cdef int64_t mp = (5 * doy + 2) / 153
    cdef int64_t mday = doy - (153 * mp + 2) / 5 + 1
    cdef int64_t month = mp + 3 if mp < 10 else mp - 9
    if month <= 2:
        year += 1
    if year < 1 or year > 9999:
        raise OverflowError("date value out of range")  # what the pure twin's datetime arithmetic says
    cdef int64_t seconds = rest / 1000000
    return datetime_new(
        <int>year, <int>month, <int>mday, <int>(seconds / 3600), <int>(seconds / 60 % 60), <int>(seconds % 60),
        <int>(rest % 1000000), _UTC,
    )


cdef object _uuid(const char* raw):
    # As uuid_from_bytes does: set the two slots the way UUID.__init__ does, minus its checks.
    value = _blank(_UUID)
    # All zeros is 0 without the call: CPython 3.11 builds 0 there by multiplying an
    # unset digit by a size of 0, right, but a false alarm under memcheck.
    number = 0 if memcmp(raw, _ZEROS, 16) == 0 else _PyLong_FromByteArray(<const unsigned char*>raw, 16, 0, 0)
    _set(value, "int", number)
    _set(value, "is_safe", _SAFE_UNKNOWN)
    return value


cdef inline str _text(bytes record, Py_ssize_t start, Py_ssize_t end):
    return PyUnicode_DecodeUTF8(PyBytes_AS_STRING(record) + start, end - start, NULL)


cdef dict _tags_dict(bytes record, const Header* h):
    """The tags as text, checked as the pure twin checks them (all lengths, then UTF-8)."""
    cdef Py_ssize_t room[256]
    cdef Py_ssize_t* spans = _tag_spans(record, h, room, 256)
    cdef dict tags = {}
    cdef Py_ssize_t i
    try:
        for i in range(h.tag_count):
            tags[_clamped_text(record, spans[4 * i], spans[4 * i + 1])] = _clamped_text(
                record, spans[4 * i + 2], spans[4 * i + 3]
            )
    finally:
        if spans != room:
            PyMem_Free(spans)
    return tags


cdef inline str _clamped_text(bytes record, Py_ssize_t start, Py_ssize_t length):
    cdef Py_ssize_t size = PyBytes_GET_SIZE(record)
    if start > size:
        start = size
    if start + length > size:
        length = size - start
    return PyUnicode_DecodeUTF8(PyBytes_AS_STRING(record) + start, length, NULL)


def unpack_item(bytes record not None, content_type, now, decode):
    """The item a record holds, its payload decoded by ``decode``; or None when the
    record has expired at ``now`` (None: do not check) or is not of ``content_type``
    (None: any).

    Raises:
        StorageCorruptionError: the record does not parse.
        whatever ``decode`` raises for a payload it cannot decode.
    """
    return _item(record, content_type, now, decode)


cdef object _item(bytes record, object content_type, object now, object decode):
    cdef Header h
    _read_header(record, &h)
    if now is not None and h.flags & _FLAG_EXPIRES and h.expires <= <int64_t>now:
        return None
    cdef const char* p = PyBytes_AS_STRING(record)
    cdef Py_ssize_t type_len = h.tags_start - h.type_start
    if content_type is not None:
        if PyBytes_GET_SIZE(content_type) != type_len or memcmp(
            PyBytes_AS_STRING(content_type), p + h.type_start, type_len
        ):
            return None
    # The same steps in the same order as the pure twin, so a record with
    # several faults is reported by the same first one.
    try:
        created = _datetime(h.created)
        uuid = _uuid(p + 16)
        key = _text(record, h.key_start, h.type_start)
        type_text = _text(record, h.type_start, h.tags_start)
        updated = created if h.updated == h.created else _datetime(h.updated)
        expires = _datetime(h.expires) if h.flags & _FLAG_EXPIRES else None
        tags = _tags_dict(record, &h)
        # In the order of the dataclass fields, as their __init__ stores them.
        metadata = _blank(StorageMetadata)
        _set(metadata, "id", uuid)
        _set(metadata, "key", key)
        _set(metadata, "content_type", type_text)
        _set(metadata, "created_at", created)
        _set(metadata, "updated_at", updated)
        _set(metadata, "expires_at", expires)
        _set(metadata, "tags", tags)
    except (UnicodeDecodeError, OverflowError) as exc:
        raise corrupt(str(exc)) from exc
    item = _blank(StorageItem)
    if decode is _UNPACK_PAYLOAD:
        data = _payload(<const uint8_t*>p + h.payload_start, PyBytes_GET_SIZE(record) - h.payload_start)
    else:
        data = decode(_slice(record, h.payload_start, PyBytes_GET_SIZE(record)))
    _set(item, "data", data)
    _set(item, "metadata", metadata)
    return item

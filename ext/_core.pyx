# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, auto_pickle=False
"""The native twin of unistore._purecore: the same names, the same results.

Records are read in place (no copies for what a query does not need); payloads
are decoded from the record with msgpack's semantics; the glob runs the plan
both twins compile (Redis 7's ``stringmatchlen``, step for step) over 256-bit
byte sets; id lists are merged or galloped in C. Errors and value types come
from the plain-Python modules both twins share, so both raise and return the
same things.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.datetime cimport datetime_new, import_datetime
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject, PyObject_GenericSetAttr, PyTypeObject
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy, memset

import_datetime()

from datetime import datetime, timezone
from uuid import UUID as _UUID, SafeUUID

from unistore.errors import StorageCorruptionError
from unistore._coretypes import (
    EXT_DATETIME,
    EXT_UUID,
    FLAG_EXPIRES,
    RECORD_FORMAT_VERSION,
    GLOB_MAX_NESTING,
    HEADER_SIZE,
    PAYLOAD_ERRORS,
    RecordFields,
    corrupt,
)
from unistore.model import StorageItem, StorageMetadata, StorageResult

cdef object _UTC = timezone.utc
cdef tuple _NO_ARGS = ()
cdef char _ZEROS[16]  # C statics start zeroed


cdef extern from "Python.h":
    # What int.from_bytes calls; exported (underscored) by every CPython we support.
    object _PyLong_FromByteArray(const unsigned char* data, size_t size, int little_endian, int is_signed)


cdef inline object _blank(type cls):
    """An instance of ``cls`` without running its ``__init__`` (what ``cls.__new__(cls)`` does)."""
    return (<PyTypeObject*>cls).tp_new(cls, <PyObject*>_NO_ARGS, NULL)


cdef inline void _set(object instance, str name, object value) except *:
    # The attribute store every instance of a plain Python class takes, slots or
    # instance values alike; a generated dataclass __init__ makes the same stores.
    PyObject_GenericSetAttr(instance, name, value)

cdef object _SAFE_UNKNOWN = SafeUUID.unknown
cdef Py_ssize_t _HEADER = HEADER_SIZE  # (a C constant of the shared value)
cdef uint8_t _FLAG_EXPIRES = FLAG_EXPIRES


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



# -- payload: msgpack as the codec writes it ------------------------------------------
#
# The pure twin is msgpack.unpackb(payload, ext_hook=..., strict_map_key=False,
# raw=False); this is the same decoding, value for value and error class for error
# class (limits, nesting depth, extra data), with two differences that change no
# result: it decodes in place from the record, and it keeps the text of short map
# keys, which repeat from item to item, so a load does not build and hash them again.

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    object _PyDict_NewPresized(Py_ssize_t size)
    void Py_XDECREF(PyObject*)
    void Py_INCREF(object)

from msgpack import ExtraData as _ExtraData, FormatError as _FormatError, StackError as _StackError, Timestamp

cdef int _MAX_DEPTH = 1024  # msgpack's: the 1025th nested container is refused
cdef enum:
    _KEYS = 1024  # slots of the map-key cache (a power of two)
    _KEY_BYTES = 32  # longer keys are not kept

cdef PyObject* _key_cache[_KEYS]  # owned references, NULL where empty


cdef struct _Input:
    const uint8_t* pos
    const uint8_t* end
    Py_ssize_t size  # of the whole payload: msgpack's length limits are relative to it


cdef inline uint64_t _be(const uint8_t* p, int n) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n):
        v = (v << 8) | p[i]
    return v


cdef inline const uint8_t* _take(_Input* src, uint64_t n) except NULL:
    """The next ``n`` bytes, consumed; msgpack's error when there are fewer."""
    cdef const uint8_t* start = src.pos
    if n > <uint64_t>(src.end - start):
        raise ValueError("Unpack failed: incomplete input")
    src.pos = start + n
    return start


cdef inline double _float32(uint32_t bits) noexcept nogil:
    cdef float value
    memcpy(&value, &bits, 4)
    return value


cdef inline double _float64(uint64_t bits) noexcept nogil:
    cdef double value
    memcpy(&value, &bits, 8)
    return value


cdef object _map_key(const uint8_t* p, Py_ssize_t n):
    # A cheap slot: length and the bytes at both ends and in the middle; the memcmp
    # below decides, so keys that share a slot only take turns in it.
    cdef uint32_t h = <uint32_t>n
    if n:
        h = (h * 31u + p[0]) * 31u + p[n - 1]
        h = (h * 31u + p[n >> 1]) * 2654435761u
    h = (h >> 16) & (_KEYS - 1)
    cdef PyObject* kept = _key_cache[h]
    if kept != NULL and PyUnicode_GET_LENGTH(<object>kept) == n and memcmp(PyUnicode_DATA(<object>kept), p, n) == 0:
        return <object>kept  # ASCII only is kept: its characters are its bytes
    key = PyUnicode_DecodeUTF8(<const char*>p, n, NULL)
    if PyUnicode_IS_COMPACT_ASCII(key):
        Py_INCREF(key)
        Py_XDECREF(kept)
        _key_cache[h] = <PyObject*>key
    return key


cdef object _ext(int code, const uint8_t* p, Py_ssize_t n):
    # The codec's two extension types, built as the pure twin's hook builds them.
    if code == EXT_DATETIME and n == 8:
        return _datetime(<int64_t>_be(p, 8))
    if code == EXT_UUID and n == 16:
        return _uuid(<const char*>p)
    if code == -1:  # msgpack's own timestamp, decoded by msgpack whichever twin runs
        return Timestamp.from_bytes(PyBytes_FromStringAndSize(<const char*>p, n))
    raise ValueError(f"unknown extension type {code} of {n} bytes")


cdef object _decode(_Input* src, int depth, bint key):
    cdef const uint8_t* p = _take(src, 1)
    cdef uint8_t b = p[0]
    cdef uint64_t n
    cdef int width
    if b <= 0x7F:
        return <long>b
    if b >= 0xE0:
        return <long>(<signed char>b)
    if b <= 0x8F:
        return _container(src, b & 0x0F, True, depth)
    if b <= 0x9F:
        return _container(src, b & 0x0F, False, depth)
    if b <= 0xBF:
        return _text_value(src, b & 0x1F, key)
    if b == 0xC0:
        return None
    if b == 0xC1:
        raise _FormatError("Unpack failed: reserved byte 0xc1")
    if b == 0xC2:
        return False
    if b == 0xC3:
        return True
    if b == 0xC4 or b == 0xC5 or b == 0xC6:  # bin 8, 16, 32
        n = _be(_take(src, 1 << (b - 0xC4)), 1 << (b - 0xC4))
        if n > <uint64_t>src.size:
            raise ValueError(f"{n} exceeds max_bin_len({src.size})")
        return PyBytes_FromStringAndSize(<const char*>_take(src, n), n)
    if b == 0xC7 or b == 0xC8 or b == 0xC9:  # ext 8, 16, 32
        width = 1 << (b - 0xC7)
        n = _be(_take(src, width), width)
        p = _take(src, 1)
        if n > <uint64_t>src.size:
            raise ValueError(f"{n} exceeds max_ext_len({src.size})")
        return _ext(<signed char>p[0], _take(src, n), n)
    if b == 0xCA:
        return _float32(<uint32_t>_be(_take(src, 4), 4))
    if b == 0xCB:
        return _float64(_be(_take(src, 8), 8))
    if b <= 0xCF:  # uint 8, 16, 32, 64
        width = 1 << (b - 0xCC)
        return _be(_take(src, width), width)
    if b <= 0xD3:  # int 8, 16, 32, 64
        width = 1 << (b - 0xD0)
        n = _be(_take(src, width), width)
        if width < 8 and n >> (8 * width - 1):
            return <int64_t>n - (<int64_t>1 << (8 * width))
        return <int64_t>n
    if b <= 0xD8:  # fixext 1, 2, 4, 8, 16
        width = 1 << (b - 0xD4)
        p = _take(src, 1 + width)
        return _ext(<signed char>p[0], p + 1, width)
    if b <= 0xDB:  # str 8, 16, 32
        width = 1 << (b - 0xD9)
        return _text_value(src, _be(_take(src, width), width), key)
    if b <= 0xDD:  # array 16, 32
        width = 2 << (b - 0xDC)
        return _container(src, _be(_take(src, width), width), False, depth)
    width = 2 << (b - 0xDE)  # map 16, 32: all that is left
    return _container(src, _be(_take(src, width), width), True, depth)


cdef object _text_value(_Input* src, uint64_t n, bint key):
    if n > <uint64_t>src.size:
        raise ValueError(f"{n} exceeds max_str_len({src.size})")
    cdef const uint8_t* p = _take(src, n)
    if key and n <= _KEY_BYTES:
        return _map_key(p, n)
    return PyUnicode_DecodeUTF8(<const char*>p, n, NULL)


cdef object _container(_Input* src, uint64_t n, bint is_map, int depth):
    if depth >= _MAX_DEPTH:
        raise _StackError("Unpack failed: nesting deeper than msgpack allows")
    cdef uint64_t i
    if is_map:
        if n > <uint64_t>(src.size // 2):
            raise ValueError(f"{n} exceeds max_map_len({src.size // 2})")
        mapping = _PyDict_NewPresized(n)
        for i in range(n):
            k = _decode(src, depth + 1, True)
            mapping[k] = _decode(src, depth + 1, False)
        return mapping
    if n > <uint64_t>src.size:
        raise ValueError(f"{n} exceeds max_array_len({src.size})")
    items = PyList_New(n)
    for i in range(n):
        value = _decode(src, depth + 1, False)
        Py_INCREF(value)
        PyList_SET_ITEM(items, i, value)
    return items


cdef object _payload(const uint8_t* start, Py_ssize_t size):
    cdef _Input src
    src.pos = start
    src.end = start + size
    src.size = size
    value = _decode(&src, 0, False)
    if src.pos != src.end:
        raise _ExtraData(value, PyBytes_FromStringAndSize(<const char*>src.pos, src.end - src.pos))
    return value


def unpack_payload(bytes payload not None):
    """The data a payload holds.

    Raises:
        ValueError, TypeError or OverflowError: bytes the codec did not write.
    """
    return _payload(<const uint8_t*>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))


cdef object _UNPACK_PAYLOAD = unpack_payload  # unpack_item decodes in place when given it

# -- glob ------------------------------------------------------------------------------
#
# The pattern is parsed here in C, step for step as the pure twin's plan
# (unistore._coretypes.plan_glob, itself Redis 7's stringmatchlen): segments between
# stars, each element a 256-bit set. Parsing in C keeps a 100 KB pattern at about a
# millisecond, as Redis (issue 12: the shared Python plan took 50-500 ms). Matching
# anchors the first and last segments and finds each middle one leftmost, jumping with
# memchr to where a segment's first byte occurs when that element is a single byte:
# linear in the key for the patterns searches use.

cdef inline bint _has(const uint8_t* bitmap, uint8_t byte) noexcept nogil:
    return (bitmap[byte >> 3] >> (byte & 7)) & 1


cdef inline void _add(uint8_t* bitmap, uint8_t byte) noexcept nogil:
    bitmap[byte >> 3] |= <uint8_t>(1 << (byte & 7))


cdef inline int _as_char(uint8_t byte) noexcept nogil:
    # Redis compares range bounds as C `char`, signed on the platforms it ships for.
    return <int>byte - 256 if byte >= 0x80 else <int>byte


cdef int _only_byte(const uint8_t* bitmap) noexcept nogil:
    """The one byte the set holds, or -1 if it holds none or several."""
    cdef int found = -1, at, bit
    cdef uint8_t bits
    for at in range(32):
        bits = bitmap[at]
        if bits:
            if found >= 0 or bits & (bits - 1):
                return -1
            bit = 0
            while not (bits >> bit) & 1:
                bit += 1
            found = 8 * at + bit
    return found


cdef Py_ssize_t _parse_class(const uint8_t* p, Py_ssize_t size, Py_ssize_t i, uint8_t* bitmap) noexcept nogil:
    """Fill ``bitmap`` with the class that starts at ``p[i]`` (after its '['); returns
    where it ends (its ']', or the last byte when it is unterminated)."""
    cdef bint negate = i < size and p[i] == b'^'
    cdef int low, high, member, at
    memset(bitmap, 0, 32)
    if negate:
        i += 1
    while True:
        if i < size and p[i] == b'\\' and size - i >= 2:
            i += 1
            _add(bitmap, p[i])
        elif i < size and p[i] == b']':
            break
        elif i >= size:  # unterminated: the rest of the pattern was the class
            i -= 1
            break
        elif size - i >= 3 and p[i + 1] == b'-':
            low, high = _as_char(p[i]), _as_char(p[i + 2])
            if low > high:
                low, high = high, low
            for member in range(low, high + 1):
                _add(bitmap, <uint8_t>(member & 0xFF))
            i += 2
        else:
            _add(bitmap, p[i])
        i += 1
    if negate:
        for at in range(32):
            bitmap[at] = ~bitmap[at]
    return i


cdef class Glob:
    """A compiled Redis glob. ``Glob(p).match(s)`` equals Redis ``SCAN MATCH p`` on key ``s``."""

    cdef uint8_t* _sets  # 32 bytes per element, segment after segment
    cdef Py_ssize_t* _bounds  # segment k is elements _bounds[k] up to _bounds[k + 1]
    cdef int* _lead  # per segment: the one byte its first element matches, or -1
    cdef Py_ssize_t _count
    cdef bint _never, _empty

    def __cinit__(self, bytes pattern not None):
        # Built here, not in __init__: no Glob can exist unbuilt, or be built twice.
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(pattern)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(pattern), i = 0, e = 0, k = 0
        cdef uint8_t* element
        # At most one element per byte, and one segment more than there are stars.
        self._sets = <uint8_t*>PyMem_Malloc(32 * size + 1)
        self._bounds = <Py_ssize_t*>PyMem_Malloc(sizeof(Py_ssize_t) * (size + 2))
        self._lead = <int*>PyMem_Malloc(sizeof(int) * (size + 1))
        if self._sets == NULL or self._bounds == NULL or self._lead == NULL:
            raise MemoryError()
        self._bounds[0] = 0
        while i < size:
            if p[i] == b'*':  # runs of stars are one star
                while i + 1 < size and p[i + 1] == b'*':
                    i += 1
                k += 1
                self._bounds[k] = e
            else:
                element = self._sets + 32 * e
                if p[i] == b'?':
                    memset(element, 0xFF, 32)
                elif p[i] == b'[':
                    i = _parse_class(p, size, i + 1, element)
                else:
                    if p[i] == b'\\' and size - i >= 2:  # '\x': x literally
                        i += 1
                    memset(element, 0, 32)
                    _add(element, p[i])
                e += 1
            i += 1
        self._count = k + 1
        self._bounds[k + 1] = e
        for i in range(self._count):
            self._lead[i] = _only_byte(self._sets + 32 * self._bounds[i]) if self._bounds[i] < self._bounds[i + 1] else -1
        # More nested stars than Redis follows: no non-empty key matches (a final star is not nested).
        self._never = k - (1 if k > 0 and self._bounds[k] == e else 0) > GLOB_MAX_NESTING
        self._empty = size == 0

    def __dealloc__(self):
        PyMem_Free(self._sets)
        PyMem_Free(self._bounds)
        PyMem_Free(self._lead)

    def match(self, bytes subject not None):
        """Whether ``subject`` matches the whole pattern."""
        return self._matches(<const uint8_t*>PyBytes_AS_STRING(subject), PyBytes_GET_SIZE(subject))

    cdef inline bint _at(self, Py_ssize_t k, const uint8_t* s) noexcept nogil:
        """Whether segment ``k`` matches the bytes at ``s`` (as many as it has elements)."""
        cdef Py_ssize_t first = self._bounds[k], e
        cdef const uint8_t* sets = self._sets
        for e in range(first, self._bounds[k + 1]):
            if not _has(sets + 32 * e, s[e - first]):
                return 0
        return 1

    cdef bint _matches(self, const uint8_t* s, Py_ssize_t n) noexcept nogil:
        if n == 0:
            return self._empty  # Redis never reaches its loop for an empty key
        if self._never:
            return 0
        cdef Py_ssize_t* bounds = self._bounds
        cdef Py_ssize_t first = bounds[1] - bounds[0]
        if self._count == 1:
            return first == n and self._at(0, s)
        cdef Py_ssize_t end = n - (bounds[self._count] - bounds[self._count - 1])
        if end < first or not self._at(0, s) or not self._at(self._count - 1, s + end):
            return 0
        cdef Py_ssize_t pos = first, k, size, limit
        cdef int lead
        cdef const uint8_t* found
        for k in range(1, self._count - 1):
            size = bounds[k + 1] - bounds[k]
            limit = end - size  # the last place the segment can start
            lead = self._lead[k]
            while True:
                if pos > limit:
                    return 0
                if lead >= 0:
                    found = <const uint8_t*>memchr(s + pos, lead, limit - pos + 1)
                    if found == NULL:
                        return 0
                    pos = found - s
                if self._at(k, s + pos):
                    break
                pos += 1
            pos += size
        return 1


def glob_match(bytes pattern not None, bytes subject not None):
    """Whether ``subject`` matches the Redis glob ``pattern`` (both bytes)."""
    return Glob(pattern).match(subject)


def glob_literal_prefix(bytes pattern not None):
    """The bytes every key matching ``pattern`` starts with (its leading literals)."""
    cdef const char* p = PyBytes_AS_STRING(pattern)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(pattern), i = 0, n = 0
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* o = PyBytes_AS_STRING(out)
    while i < size and p[i] != b'*' and p[i] != b'?' and p[i] != b'[':
        if p[i] == b'\\' and size - i >= 2:
            i += 1
        o[n] = p[i]
        n += 1
        i += 1
    return out[:n]


# -- query matching ------------------------------------------------------------------

cdef class QueryMatcher:
    """A compiled query, checked against a record's header without its payload."""

    cdef Glob _glob
    cdef bytes _content_type
    cdef list _tags
    cdef bint _has_ca, _has_cb, _has_ea, _has_eb
    cdef int64_t _ca, _cb, _ea, _eb

    def __init__(self, pattern, content_type, tags, created_after, created_before, expires_after, expires_before):
        self._glob = None if pattern is None else Glob(pattern)
        self._content_type = content_type
        self._tags = [(bytes(k), bytes(v)) for k, v in tags]
        self._has_ca = created_after is not None
        self._has_cb = created_before is not None
        self._has_ea = expires_after is not None
        self._has_eb = expires_before is not None
        self._ca = created_after if self._has_ca else 0
        self._cb = created_before if self._has_cb else 0
        self._ea = expires_after if self._has_ea else 0
        self._eb = expires_before if self._has_eb else 0

    def matches(self, bytes record not None, int64_t now):
        """Whether the record is live at ``now`` and meets every criterion.

        Raises:
            StorageCorruptionError: the record's header does not parse.
        """
        return self._match(record, now) == 1

    def matching(self, records, int64_t now, Py_ssize_t most=-1):
        """The indexes of the records that :meth:`matches`, in one call, stopping
        after ``most`` of them (-1: no limit); records after that are not read.

        Raises:
            StorageCorruptionError: a record's header does not parse;
                ``details["index"]`` says which.
        """
        cdef list found = []
        cdef list items = records if type(records) is list else list(records)
        cdef Py_ssize_t index
        cdef bytes record
        for index in range(len(items)):
            record = items[index]
            try:
                hit = self._match(record, now)
            except StorageCorruptionError as exc:
                exc.details["index"] = index
                raise
            if hit:
                found.append(index)
                if len(found) == most:
                    break
        return found

    def results(self, records, int64_t now, Py_ssize_t most=-1):
        """The items of the records that :meth:`matches`, decoded, as search
        results, stopping after ``most`` of them (-1: no limit).

        Raises:
            StorageCorruptionError: a record's header does not parse, or a matching
                record does not decode; ``details["index"]`` says which.
        """
        cdef list found = []
        cdef list items = records if type(records) is list else list(records)
        cdef Py_ssize_t index
        cdef bytes record
        for index in range(len(items)):
            record = items[index]
            try:
                if not self._match(record, now):
                    continue
                item = _item(record, None, None, _UNPACK_PAYLOAD)
            except StorageCorruptionError as exc:
                exc.details["index"] = index
                raise
            except PAYLOAD_ERRORS as exc:
                error = corrupt(str(exc))
                error.details["index"] = index
                raise error from exc
            result = _blank(StorageResult)  # as its dataclass __init__ would set it
            _set(result, "item", item)
            _set(result, "score", 1.0)
            _set(result, "highlights", [])
            found.append(result)
            if len(found) == most:
                break
        return found

    cdef int _match(self, bytes record, int64_t now) except -1:
        cdef Header h
        _read_header(record, &h)
        cdef bint has_expiry = h.flags & _FLAG_EXPIRES
        if has_expiry and h.expires <= now:
            return 0
        if self._has_ca and h.created < self._ca:
            return 0
        if self._has_cb and h.created > self._cb:
            return 0
        if self._has_ea and not (has_expiry and h.expires >= self._ea):
            return 0
        if self._has_eb and not (has_expiry and h.expires <= self._eb):
            return 0
        cdef const char* p = PyBytes_AS_STRING(record)
        cdef Py_ssize_t type_len = h.tags_start - h.type_start
        if self._content_type is not None and (
            PyBytes_GET_SIZE(self._content_type) != type_len
            or memcmp(PyBytes_AS_STRING(self._content_type), p + h.type_start, type_len)
        ):
            return 0
        if self._glob is not None and not self._glob._matches(
            <const uint8_t*>p + h.key_start, h.type_start - h.key_start
        ):
            return 0
        if self._tags:
            return self._tags_match(record, &h)
        return 1

    cdef int _tags_match(self, bytes record, const Header* h) except -1:
        # What the pure twin's dict of the record's tags answers (the last of a
        # repeated key wins), without building it: the spans of the checked section.
        cdef Py_ssize_t room[256]
        cdef Py_ssize_t* spans = _tag_spans(record, h, room, 256)
        cdef const char* p = PyBytes_AS_STRING(record)
        cdef Py_ssize_t j, found, key_len, value_len
        cdef bytes tag_key, tag_value
        try:
            for tag_key, tag_value in self._tags:
                key_len = PyBytes_GET_SIZE(tag_key)
                found = -1
                for j in range(h.tag_count):
                    if spans[4 * j + 1] == key_len and memcmp(p + spans[4 * j], PyBytes_AS_STRING(tag_key), key_len) == 0:
                        found = j
                if found < 0:
                    return 0
                value_len = PyBytes_GET_SIZE(tag_value)
                if spans[4 * found + 3] != value_len or memcmp(
                    p + spans[4 * found + 2], PyBytes_AS_STRING(tag_value), value_len
                ):
                    return 0
            return 1
        finally:
            if spans != room:
                PyMem_Free(spans)


# -- sorted id lists -------------------------------------------------------------------

cdef Py_ssize_t _check_ids(bytes packed) except -1:
    cdef Py_ssize_t size = PyBytes_GET_SIZE(packed)
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(packed)
    cdef Py_ssize_t i
    if size % 8:
        raise ValueError(f"an id list is whole 8-byte ids; got {size} bytes")
    for i in range(8, size, 8):
        if _be64(p + i - 8) >= _be64(p + i):
            raise ValueError("an id list must be sorted ascending without repeats")
    return size // 8


cdef Py_ssize_t _gallop(const uint8_t* p, Py_ssize_t low, Py_ssize_t count, uint64_t target) noexcept nogil:
    """The first index >= low whose id is >= target (count if none)."""
    cdef Py_ssize_t step = 1, high = low
    while high < count and _be64(p + 8 * high) < target:
        low = high + 1
        high += step
        step <<= 1
    if high > count:
        high = count
    while low < high:
        step = (low + high) // 2
        if _be64(p + 8 * step) < target:
            low = step + 1
        else:
            high = step
    return low


def ids_from_entries(const unsigned char[::1] entries, Py_ssize_t key_size):
    """The ids of a posting list read in bulk: ``entries`` is what LMDB's
    MDB_GET_MULTIPLE gives for one key, ``key_size`` bytes of key then an
    8-byte id, repeated; the result is the ids back to back.

    Raises:
        ValueError: the entries do not divide into whole (key, id) pairs.
    """
    cdef Py_ssize_t stride = key_size + 8, size = entries.shape[0], count, i
    if key_size < 0 or size % stride:
        raise ValueError(f"entries of {stride} bytes do not divide {size} bytes")
    count = size // stride
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 8 * count)
    cdef char* o = PyBytes_AS_STRING(out)
    for i in range(count):
        memcpy(o + 8 * i, &entries[i * stride + key_size], 8)
    return out


def intersect_ids(bytes first not None, bytes second not None):
    """The ids in both lists; each list is sorted, unique, 8-byte big-endian ids back to back.

    Raises:
        ValueError: a list that is not whole, sorted, unique ids.
    """
    cdef Py_ssize_t n1 = _check_ids(first), n2 = _check_ids(second)
    if n1 > n2:
        first, second = second, first
        n1, n2 = n2, n1
    cdef const uint8_t* a = <const uint8_t*>PyBytes_AS_STRING(first)
    cdef const uint8_t* b = <const uint8_t*>PyBytes_AS_STRING(second)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 8 * n1)
    cdef uint8_t* o = <uint8_t*>PyBytes_AS_STRING(out)
    cdef Py_ssize_t i = 0, j = 0, n = 0
    cdef uint64_t x, y
    cdef bint gallop = n2 > 16 * n1  # merging costs n1 + n2; galloping n1 * log(n2 / n1)
    with nogil:
        while i < n1 and j < n2:
            x = _be64(a + 8 * i)
            if gallop:
                j = _gallop(b, j, n2, x)
                if j == n2:
                    break
            y = _be64(b + 8 * j)
            if x == y:
                memcpy(o + 8 * n, a + 8 * i, 8)
                n += 1
                i += 1
                j += 1
            elif x < y:
                i += 1
            else:
                j += 1
    return out[: 8 * n]


def union_ids(bytes first not None, bytes second not None):
    """The ids in either list, in the same form as :func:`intersect_ids`.

    Raises:
        ValueError: a list that is not whole, sorted, unique ids.
    """
    cdef Py_ssize_t n1 = _check_ids(first), n2 = _check_ids(second)
    cdef const uint8_t* a = <const uint8_t*>PyBytes_AS_STRING(first)
    cdef const uint8_t* b = <const uint8_t*>PyBytes_AS_STRING(second)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 8 * (n1 + n2))
    cdef uint8_t* o = <uint8_t*>PyBytes_AS_STRING(out)
    cdef Py_ssize_t i = 0, j = 0, n = 0
    cdef uint64_t x, y
    with nogil:
        while i < n1 or j < n2:
            if j == n2:
                memcpy(o + 8 * n, a + 8 * i, 8)
                i += 1
            elif i == n1:
                memcpy(o + 8 * n, b + 8 * j, 8)
                j += 1
            else:
                x = _be64(a + 8 * i)
                y = _be64(b + 8 * j)
                if x <= y:
                    memcpy(o + 8 * n, a + 8 * i, 8)
                    i += 1
                    if x == y:
                        j += 1
                else:
                    memcpy(o + 8 * n, b + 8 * j, 8)
                    j += 1
            n += 1
    return out[: 8 * n]


__all__ = [
    "FLAG_EXPIRES",
    "RECORD_FORMAT_VERSION",
    "GLOB_MAX_NESTING",
    "HEADER_SIZE",
    "Glob",
    "QueryMatcher",
    "RecordFields",
    "glob_literal_prefix",
    "glob_match",
    "ids_from_entries",
    "intersect_ids",
    "pack_new",
    "pack_record",
    "union_ids",
    "unpack_item",
    "unpack_payload",
    "unpack_record",
]

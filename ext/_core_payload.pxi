# Included by _core.pyx (one module): The payload: msgpack as the codec writes it, decoded straight from the record.

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

# Included by _core.pyx (one module): Sorted id lists: decoding LMDB's bulk reads, intersecting and merging in C.

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

# Included by _core.pyx (one module): Redis-style globbing: the plan both twins compile, run over 256-bit byte sets.

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

# Included by _core.pyx (one module): Query matching on a record's header alone (key, content type, tags, times).

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

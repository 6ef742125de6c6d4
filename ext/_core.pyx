# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, auto_pickle=False
"""The native twin of unistore._purecore: the same names, the same results.

Records are read in place (no copies for what a query does not need); payloads
are decoded from the record with msgpack's semantics; the glob runs the plan
both twins compile (Redis 7's ``stringmatchlen``, step for step) over 256-bit
byte sets; id lists are merged or galloped in C. Errors and value types come
from the plain-Python modules both twins share, so both raise and return the
same things.

One module, its parts included by concern, in this order (each uses what the ones
before it define): ``_core_record.pxi`` (the record layout, records and items),
``_core_payload.pxi`` (msgpack payloads), ``_core_glob.pxi`` (globbing),
``_core_matcher.pxi`` (query matching) and ``_core_ids.pxi`` (sorted id lists).
This file holds what they all share.
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


include "_core_record.pxi"
include "_core_payload.pxi"
include "_core_glob.pxi"
include "_core_matcher.pxi"
include "_core_ids.pxi"


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

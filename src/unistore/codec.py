"""The one record format every provider stores, from model objects to bytes and back.

The layout of a record is defined by the core (:mod:`unistore._purecore`); this
module adds the payload encoding (msgpack with two extension types; the core's
``unpack_payload`` decodes it) and the mapping to and from
:class:`~unistore.model.StorageItem`:

- ``datetime`` is extension type 1: 8 bytes, big-endian signed microseconds
  since the epoch in UTC (a naive datetime is local time); it loads as an
  aware UTC datetime.
- ``UUID`` is extension type 2: its 16 bytes.
- ``bytes`` stays ``bytes``; tuples load as lists.

Anything else is refused with :class:`~unistore.errors.SerializationError`
before a byte is written, and every payload is decoded once before it is
stored, so nothing is written that could not be read back (a dict keyed by
tuples, for one, would not be: its keys load as unhashable lists), and nothing
merges silently (a dict whose distinct keys encode alike, such as a naive and an
aware datetime of one instant, is refused).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import msgpack

from ._coretypes import EXT_DATETIME, EXT_UUID, PAYLOAD_ERRORS, new_uuid_bytes
from .core import RecordFields, pack_record, unpack_item, unpack_payload, unpack_record
from .errors import ItemNotFoundError, SerializationError, StorageCorruptionError, ValidationError
from .model import (
    StorageItem,
    StorageMetadata,
    Tags,
    datetime_to_micros,
    validate_key,
    validate_name,
    validate_tags,
    validate_time,
    validate_wanted_type,
)

_I64 = struct.Struct(">q")
# What the core, msgpack and the model raise for bytes that are not what we wrote.
_DECODE_ERRORS = (StorageCorruptionError, *PAYLOAD_ERRORS)


def _pack_default(value: object) -> msgpack.ExtType:
    if isinstance(value, datetime):
        _packers.extended = True
        return msgpack.ExtType(EXT_DATETIME, _I64.pack(datetime_to_micros(value)))
    if isinstance(value, UUID):
        _packers.extended = True
        return msgpack.ExtType(EXT_UUID, value.bytes)
    if isinstance(value, int):  # msgpack hands over only the integers it cannot hold
        raise TypeError(f"an integer of {value.bit_length()} bits is outside msgpack's range (-2**63 to 2**64-1)")
    raise TypeError(f"a {type(value).__name__} is not a msgpack value, datetime, UUID or bytes")


# One Packer per thread, made once: msgpack.packb builds one per call, which costs as
# much as the packing; one per thread because _pack_default runs Python code mid-pack.
# A Packer's buffer only grows: one that packed more than it starts with is dropped,
# so a thread that once saved a big item does not hold twice its size for good.
_packers = threading.local()
_PACKER_KEEPS = 256 * 1024  # bytes: msgpack's initial buffer


def encode_payload(data: object) -> tuple[bytes, Any]:
    """``(payload, data as it will load)``.

    Raises:
        SerializationError: ``data`` holds something that cannot be stored.
    """
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(default=_pack_default, use_bin_type=True, datetime=False)
    _packers.extended = False
    try:
        payload = packer.pack(data)  # a Packer resets itself when packing fails
        loaded = unpack_payload(payload)
        # Distinct keys can only encode alike through an extension type (a naive and an
        # aware datetime of one instant): then the data must pack again as it loads.
        merged = _packers.extended and packer.pack(loaded) != payload
    except (TypeError, ValueError, OverflowError) as exc:
        _packers.packer = None  # it may have grown before it failed
        raise SerializationError(f"data cannot be stored: {exc}") from exc
    if len(payload) > _PACKER_KEEPS:
        _packers.packer = None
    if merged:
        raise SerializationError(
            "data cannot be stored: a dict holds keys that are distinct but encode alike"
            " (such as a naive and an aware datetime of one instant); they would load as one"
        )
    return payload, loaded


def is_live(expires: int | None, now: int) -> bool:
    """Whether an item with this expiry (microseconds, or None) is visible at ``now``."""
    return expires is None or expires > now


def undecodable(key: object, exc: BaseException | None) -> StorageCorruptionError:
    """The error for the record under ``key``, which does not decode (``exc`` says why)."""
    return StorageCorruptionError(f"the record stored under key {key!r} does not decode: {exc}", {"key": key})


def decode_item(record: bytes, key: object) -> StorageItem[Any]:
    """The item a record holds, expired or not; ``key`` names it in errors.

    Raises:
        StorageCorruptionError: the record does not decode.
    """
    return live_item(record, key, None, None)  # type: ignore[return-value]  # None only when expiry or type is checked


def live_item(record: bytes, key: object, content_type: bytes | None, now: int | None) -> StorageItem[Any] | None:
    """The item a record holds if it is live at ``now`` and of ``content_type``
    (None: either is not checked), else None; ``key`` names it in errors.

    Raises:
        StorageCorruptionError: the record does not decode.
    """
    try:
        return unpack_item(record, content_type, now, unpack_payload)
    except _DECODE_ERRORS as exc:
        raise undecodable(key, exc) from exc


def live_items(
    keys: Iterable[str], records: Iterable[bytes | None], content_type: bytes | None, now: int
) -> dict[str, StorageItem[Any]]:
    """``load_many``'s answer: of the records read for ``keys`` (None: no record under
    that key), the live items of ``content_type`` (None: any), by key; a record that
    holds another key (a long key's digest form may name another) is not the key's.

    Raises:
        StorageCorruptionError: a record does not decode.
    """
    items: dict[str, StorageItem[Any]] = {}
    for key, record in zip(keys, records, strict=True):
        item = None if record is None else live_item(record, key, content_type, now)
        if item is not None and item.metadata.key == key:
            items[key] = item
    return items


def decode_fields(record: bytes, key: object) -> RecordFields:
    """The record's raw fields; ``key`` names it in errors.

    Raises:
        StorageCorruptionError: the record does not decode.
    """
    try:
        return unpack_record(record)
    except StorageCorruptionError as exc:
        raise undecodable(key, exc) from exc


def live_fields(record: bytes | None, key: str, content_type: str | None, now: int) -> RecordFields | None:
    """The fields of ``record`` if it holds a live item (of ``content_type``, if given), else None.

    Raises:
        ValidationError: ``content_type`` is given but not a non-empty str.
        StorageCorruptionError: the record does not decode.
    """
    wanted = validate_wanted_type(content_type)
    if record is None:
        return None
    fields = decode_fields(record, key)
    if not is_live(fields.expires, now) or (wanted is not None and fields.content_type != wanted):
        return None
    return fields


def load_item(record: bytes | None, key: str, content_type: str | None, now: int) -> StorageItem[Any]:
    """The item in ``record`` if it is live (and of ``content_type``, if given).

    Raises:
        ItemNotFoundError: ``record`` is None, expired, or of another content type.
        StorageCorruptionError: the record does not decode.
    """
    wanted = validate_wanted_type(content_type)
    if record is not None:
        item = live_item(record, key, wanted, now)
        if item is not None:
            return item
    where = "" if content_type is None else f" with content type {content_type!r}"
    raise ItemNotFoundError(f"no item under key {key!r}{where}", {"key": key})


class PreparedSave(NamedTuple):
    """The checked arguments of one ``save``, encoded, ready to become a record.

    A named tuple: made on every save, it costs a fifth of a frozen dataclass.
    """

    key: str
    key_bytes: bytes
    content_type_bytes: bytes
    tag_pairs: list[tuple[bytes, bytes]]
    expires: int | None
    payload: bytes
    data: Any
    #: A restore's identity, kept as given: (UUID bytes, created µs, updated µs); None for a save.
    identity: tuple[bytes, int, int] | None = None

    def build(
        self, old: RecordFields | None, now: int, new_sid: Callable[[], int]
    ) -> tuple[RecordFields, bytes, StorageItem[Any]]:
        """The new record, given the one it replaces (``None`` if none).

        A live ``old`` record keeps its surrogate id, UUID and ``created_at``;
        otherwise the item is new and ``new_sid()`` numbers it. The item is read
        back from the record by the core (so it is what a load will return) with
        the data as already decoded.
        """
        fields = self.fields(old, now, new_sid)
        record = pack_record(*fields)
        item = unpack_item(record, None, None, self.loaded)  # None only when expiry or type is checked
        return fields, record, item  # type: ignore[return-value]

    def fields(self, old: RecordFields | None, now: int, new_sid: Callable[[], int]) -> RecordFields:
        """The fields of the new record (see :meth:`build`), for a caller that needs no item yet.

        A restore (``identity`` set) takes its UUID and times as given, and only
        its surrogate id from ``old``.
        """
        live = old if old is not None and is_live(old.expires, now) else None
        sid = live.sid if live is not None else new_sid()
        if self.identity is not None:
            uuid, created, updated = self.identity
        elif live is not None:
            uuid, created, updated = live.uuid, live.created, now
        else:
            uuid, created, updated = new_uuid_bytes(), now, now
        return RecordFields(
            sid,
            uuid,
            created,
            updated,
            self.expires,
            self.key_bytes,
            self.content_type_bytes,
            self.tag_pairs,
            self.payload,
        )

    def loaded(self, payload: bytes) -> Any:
        """The data, as the payload decodes (``payload`` is that payload)."""
        return self.data


def prepare_save(
    key: str,
    data: object,
    content_type: str,
    expires_at: datetime | None = None,
    tags: Tags | None = None,
) -> PreparedSave:
    """Check and encode the arguments of ``save``; nothing is written yet.

    Raises:
        ValidationError: a bad key, content type, tags or ``expires_at``.
        SerializationError: ``data`` cannot be stored.
    """
    key_bytes = validate_key(key)
    content_type_bytes = validate_name(content_type, "content_type")
    tag_pairs = validate_tags(tags)
    expires = validate_time(expires_at, "expires_at")
    payload, loaded = encode_payload(data)
    return PreparedSave(key, key_bytes, content_type_bytes, tag_pairs, expires, payload, loaded)


class PreparedBatch(NamedTuple):
    """The checked arguments of one ``save_many``: what its items share, and each
    item's key, encoded key, payload and data (as it loads) in parallel lists,
    which cost the garbage collector nothing per item (a tuple per item would)."""

    content_type_bytes: bytes
    tag_pairs: list[tuple[bytes, bytes]]
    expires: int | None
    keys: list[str]
    key_bytes: list[bytes]
    payloads: list[bytes]
    data: list[Any]

    def save(self, index: int) -> PreparedSave:
        """The item at ``index`` as a single save."""
        return PreparedSave(
            self.keys[index],
            self.key_bytes[index],
            self.content_type_bytes,
            self.tag_pairs,
            self.expires,
            self.payloads[index],
            self.data[index],
        )


def prepare_many(
    items: object,
    content_type: str,
    expires_at: datetime | None = None,
    tags: Tags | None = None,
) -> PreparedBatch:
    """Check and encode the arguments of ``save_many``: every item, before anything is written.

    Raises:
        ValidationError: ``items`` is not a mapping of keys to data, names a key
            twice, or a bad key, content type, tags or ``expires_at``.
        SerializationError: an item's data cannot be stored (naming its key).
    """
    if not isinstance(items, Mapping):
        raise ValidationError(f"items must be a mapping of keys to data, got {type(items).__name__}")
    batch = PreparedBatch(
        validate_name(content_type, "content_type"),
        validate_tags(tags),
        validate_time(expires_at, "expires_at"),
        [],
        [],
        [],
        [],
    )
    seen: set[bytes] = set()
    for key, data in items.items():
        key_bytes = validate_key(key)
        if key_bytes in seen:  # a mapping may still name one key twice (str subclasses hashed apart, a broken items())
            raise ValidationError(f"items holds key {key!r} more than once")
        seen.add(key_bytes)
        try:
            payload, loaded = encode_payload(data)
        except SerializationError as exc:
            raise SerializationError(f"item {key!r}: {exc}", {"key": key}) from exc.__cause__
        batch.keys.append(key)
        batch.key_bytes.append(key_bytes)
        batch.payloads.append(payload)
        batch.data.append(loaded)
    return batch


def _required_time(value: object, field_name: str) -> int:
    micros = validate_time(value, field_name)
    if micros is None:
        raise ValidationError(f"{field_name} must be a datetime, got None")
    return micros


def _prepare_item(item: object, position: str) -> PreparedSave:
    """Check and encode one whole item, its identity and times included; errors name
    its key (or ``position``, when the key is not a str)."""
    metadata = getattr(item, "metadata", None)
    if not isinstance(item, StorageItem) or not isinstance(metadata, StorageMetadata):
        raise ValidationError(f"{position} must be a StorageItem with StorageMetadata, got {type(item).__name__}")
    key = metadata.key
    try:
        if not isinstance(metadata.id, UUID):
            raise ValidationError(f"metadata.id must be a UUID, got {type(metadata.id).__name__}")
        created = _required_time(metadata.created_at, "metadata.created_at")
        updated = _required_time(metadata.updated_at, "metadata.updated_at")
        prepared = prepare_save(key, item.data, metadata.content_type, metadata.expires_at, metadata.tags)
    except (ValidationError, SerializationError) as exc:
        where = f"item {key!r}" if isinstance(key, str) else position
        raise type(exc)(f"{where}: {exc}", {"key": key}) from exc
    return prepared._replace(identity=(metadata.id.bytes, created, updated))


def prepare_restore(items: object) -> list[PreparedSave]:
    """Check and encode the items of ``restore_many``, every one before anything is
    written: each keeps its id, ``created_at``, ``updated_at``, expiry, tags and
    content type as given.

    Raises:
        ValidationError: ``items`` is not an iterable of :class:`StorageItem`, names
            a key twice, or an item has a bad key, id, time, content type or tags
            (its key is named).
        SerializationError: an item's data cannot be stored (its key is named).
    """
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise ValidationError(f"items must be an iterable of StorageItem, got {type(items).__name__}")
    prepared: list[PreparedSave] = []
    seen: set[bytes] = set()
    for position, item in enumerate(items):
        save = _prepare_item(item, f"items[{position}]")
        if save.key_bytes in seen:
            raise ValidationError(f"items holds key {save.key!r} more than once", {"key": save.key})
        seen.add(save.key_bytes)
        prepared.append(save)
    return prepared


def item_record(item: StorageItem[Any]) -> bytes:
    """The record of ``item`` exactly as given (id, times, expiry, content type, tags,
    data), without a store's surrogate id: the same bytes from every store that
    holds the same item, so two stores are compared by them.

    Raises:
        ValidationError, SerializationError: as :func:`prepare_restore`.
    """
    return pack_record(*_prepare_item(item, "item").fields(None, 0, no_surrogate_id))


def no_surrogate_id() -> int:
    """The surrogate id of a record that a store numbers itself, or does not use (Redis)."""
    return 0

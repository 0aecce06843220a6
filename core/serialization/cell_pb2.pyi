from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameHeader(_message.Message):
    __slots__ = ("headers", "body_kind", "body_size", "stream")
    class BodyKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[FrameHeader.BodyKind]
        BYTES: _ClassVar[FrameHeader.BodyKind]
        MODEL: _ClassVar[FrameHeader.BodyKind]
        JSON: _ClassVar[FrameHeader.BodyKind]
    NONE: FrameHeader.BodyKind
    BYTES: FrameHeader.BodyKind
    MODEL: FrameHeader.BodyKind
    JSON: FrameHeader.BodyKind
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_KIND_FIELD_NUMBER: _ClassVar[int]
    BODY_SIZE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    headers: _containers.ScalarMap[str, str]
    body_kind: FrameHeader.BodyKind
    body_size: int
    stream: StreamChunk
    def __init__(self, headers: _Optional[_Mapping[str, str]] = ..., body_kind: _Optional[_Union[FrameHeader.BodyKind, str]] = ..., body_size: _Optional[int] = ..., stream: _Optional[_Union[StreamChunk, _Mapping]] = ...) -> None: ...

class StreamChunk(_message.Message):
    __slots__ = ("stream_id", "seq", "last", "total_size")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    seq: int
    last: bool
    total_size: int
    def __init__(self, stream_id: _Optional[int] = ..., seq: _Optional[int] = ..., last: _Optional[bool] = ..., total_size: _Optional[int] = ...) -> None: ...

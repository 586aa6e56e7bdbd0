from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EchoRequest(_message.Message):
    __slots__ = ("text", "repeat", "blob")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    text: str
    repeat: int
    blob: bytes
    def __init__(self, text: _Optional[str] = ..., repeat: _Optional[int] = ..., blob: _Optional[bytes] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("text", "principal", "protection_level", "index")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    PROTECTION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    text: str
    principal: str
    protection_level: str
    index: int
    def __init__(self, text: _Optional[str] = ..., principal: _Optional[str] = ..., protection_level: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

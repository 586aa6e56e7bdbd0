from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Identity(_message.Message):
    __slots__ = ("principal", "delegation_chain", "impersonation_level", "package", "protection_level")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_CHAIN_FIELD_NUMBER: _ClassVar[int]
    IMPERSONATION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_FIELD_NUMBER: _ClassVar[int]
    PROTECTION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    principal: str
    delegation_chain: _containers.RepeatedScalarFieldContainer[str]
    impersonation_level: str
    package: str
    protection_level: str
    def __init__(self, principal: _Optional[str] = ..., delegation_chain: _Optional[_Iterable[str]] = ..., impersonation_level: _Optional[str] = ..., package: _Optional[str] = ..., protection_level: _Optional[str] = ...) -> None: ...

class GetDocumentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PutDocumentRequest(_message.Message):
    __slots__ = ("name", "content")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    content: bytes
    def __init__(self, name: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class ListDocumentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Document(_message.Message):
    __slots__ = ("name", "content", "owner", "front_saw", "storage_saw")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    FRONT_SAW_FIELD_NUMBER: _ClassVar[int]
    STORAGE_SAW_FIELD_NUMBER: _ClassVar[int]
    name: str
    content: bytes
    owner: str
    front_saw: Identity
    storage_saw: Identity
    def __init__(self, name: _Optional[str] = ..., content: _Optional[bytes] = ..., owner: _Optional[str] = ..., front_saw: _Optional[_Union[Identity, _Mapping]] = ..., storage_saw: _Optional[_Union[Identity, _Mapping]] = ...) -> None: ...

class PutDocumentResponse(_message.Message):
    __slots__ = ("name", "size", "front_saw", "storage_saw")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FRONT_SAW_FIELD_NUMBER: _ClassVar[int]
    STORAGE_SAW_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    front_saw: Identity
    storage_saw: Identity
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., front_saw: _Optional[_Union[Identity, _Mapping]] = ..., storage_saw: _Optional[_Union[Identity, _Mapping]] = ...) -> None: ...

class DocumentList(_message.Message):
    __slots__ = ("names", "storage_saw")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_SAW_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    storage_saw: Identity
    def __init__(self, names: _Optional[_Iterable[str]] = ..., storage_saw: _Optional[_Union[Identity, _Mapping]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("name", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Blob(_message.Message):
    __slots__ = ("name", "content", "owner", "storage_saw")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    STORAGE_SAW_FIELD_NUMBER: _ClassVar[int]
    name: str
    content: bytes
    owner: str
    storage_saw: Identity
    def __init__(self, name: _Optional[str] = ..., content: _Optional[bytes] = ..., owner: _Optional[str] = ..., storage_saw: _Optional[_Union[Identity, _Mapping]] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("name", "content")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    content: bytes
    def __init__(self, name: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("size", "storage_saw")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    STORAGE_SAW_FIELD_NUMBER: _ClassVar[int]
    size: int
    storage_saw: Identity
    def __init__(self, size: _Optional[int] = ..., storage_saw: _Optional[_Union[Identity, _Mapping]] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

"""The storage back service: holds document bytes and enforces a SecurityDescriptor per
document against whoever it sees -- the seed's "access check on a resource" done on open."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from protos.demo.v1 import documents_pb2 as pb
from protos.demo.v1 import documents_pb2_grpc as pb_grpc
from rpcsec.security import AccessMask, Ace, SecurityDescriptor, access_check, current_token
from rpcsec.sspi import AccessDeniedError

from .identity import caller_identity

__all__ = ["StorageServicer"]

CHUNK = 64 * 1024


class StorageServicer(pb_grpc.StorageServicer):
    """Documents keyed by name; each has an owner and a descriptor naming principals only.

    Services (documents) appear in no descriptor: the front service can read alice's document
    only while delegating as alice.
    """

    def __init__(self, seed: dict[str, tuple[str, bytes]] | None = None) -> None:
        self._lock = threading.Lock()
        self._docs: dict[str, tuple[SecurityDescriptor, bytes]] = {}
        for name, (owner, content) in (seed or {}).items():
            self._docs[name] = (self._owned_by(owner), content)

    @staticmethod
    def _owned_by(owner: str) -> SecurityDescriptor:
        return SecurityDescriptor.build(owner, [Ace.allow(owner, AccessMask.ALL)])

    def _open(self, name: str, desired: AccessMask) -> tuple[SecurityDescriptor, bytes]:
        with self._lock:
            entry = self._docs.get(name)
        if entry is None:
            raise KeyError(name)
        access_check(entry[0], desired)  # uses the impersonated caller; raises AccessDenied
        return entry

    def Read(self, request: pb.ReadRequest, context: grpc.ServicerContext) -> pb.Blob:
        try:
            descriptor, content = self._open(request.name, AccessMask.READ)
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no document {request.name!r}")
        return pb.Blob(
            name=request.name,
            content=content,
            owner=descriptor.owner,
            storage_saw=caller_identity(),
        )

    def ReadStream(
        self, request: pb.ReadRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        try:
            _, content = self._open(request.name, AccessMask.READ)
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no document {request.name!r}")
        for offset in range(0, max(len(content), 1), CHUNK):
            yield pb.Chunk(name=request.name, data=content[offset : offset + CHUNK])

    def Write(self, request: pb.WriteRequest, context: grpc.ServicerContext) -> pb.WriteResponse:
        return self._store(request.name, request.content, context)

    def WriteStream(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> pb.WriteResponse:
        name, parts = "", []
        for chunk in request_iterator:
            name = name or chunk.name
            parts.append(chunk.data)
        return self._store(name, b"".join(parts), context)

    def _store(self, name: str, content: bytes, context: grpc.ServicerContext) -> pb.WriteResponse:
        if not name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a document needs a name")
        token = current_token()
        assert token is not None  # the interceptor only runs handlers as an authenticated caller
        with self._lock:
            existing = self._docs.get(name)
        if existing is not None:
            access_check(existing[0], AccessMask.WRITE)
            descriptor = existing[0]
        else:
            descriptor = self._owned_by(token.principal)
            access_check(descriptor, AccessMask.WRITE)  # IDENTIFY-level callers cannot create
        with self._lock:
            self._docs[name] = (descriptor, content)
        return pb.WriteResponse(size=len(content), storage_saw=caller_identity())

    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.DocumentList:
        names = []
        with self._lock:
            entries = list(self._docs.items())
        for name, (descriptor, _) in entries:
            try:
                access_check(descriptor, AccessMask.READ)
            except AccessDeniedError:  # not readable by this caller: not listed
                continue
            names.append(name)
        return pb.DocumentList(names=sorted(names), storage_saw=caller_identity())

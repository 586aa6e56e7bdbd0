"""The documents front service. It holds no rights of its own on storage: every storage call
is made while impersonating the caller, so the onward secure channel picks up the caller's
delegated credentials (dynamic cloaking) and storage sees the caller, via [documents]."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from protos.demo.v1 import documents_pb2 as pb
from protos.demo.v1 import documents_pb2_grpc as pb_grpc
from rpcsec.grpc import secure_channel
from rpcsec.sspi import ImpersonationLevel, ProtectionLevel

from .identity import caller_identity

__all__ = ["DocumentsServicer"]


class DocumentsServicer(pb_grpc.DocumentsServicer):
    def __init__(
        self,
        storage_address: str,
        storage_target: str,
        protection: ProtectionLevel = ProtectionLevel.PRIVACY,
    ) -> None:
        self._storage_address = storage_address
        self._storage_target = storage_target
        self._protection = protection

    @contextmanager
    def _storage(self) -> Iterator[pb_grpc.StorageStub]:
        # No credentials: inside the handler we impersonate the caller, so the channel uses the
        # caller's delegated credentials, or raises DelegationRequiredError when the caller's
        # context is not delegation level (seed: "WATCH OUT FOR THIS"). One channel per call:
        # a channel bound with one caller's credentials is never shared with another caller.
        channel = secure_channel(
            self._storage_address,
            target_name=self._storage_target,
            impersonation=ImpersonationLevel.IMPERSONATE,
            protection=self._protection,
        )
        try:
            yield pb_grpc.StorageStub(channel)
        finally:
            channel.close()

    def GetDocument(
        self, request: pb.GetDocumentRequest, context: grpc.ServicerContext
    ) -> pb.Document:
        with self._storage() as storage:
            blob = storage.Read(pb.ReadRequest(name=request.name))
        return pb.Document(
            name=blob.name,
            content=blob.content,
            owner=blob.owner,
            front_saw=caller_identity(),
            storage_saw=blob.storage_saw,
        )

    def PutDocument(
        self, request: pb.PutDocumentRequest, context: grpc.ServicerContext
    ) -> pb.PutDocumentResponse:
        with self._storage() as storage:
            written = storage.Write(pb.WriteRequest(name=request.name, content=request.content))
        return pb.PutDocumentResponse(
            name=request.name,
            size=written.size,
            front_saw=caller_identity(),
            storage_saw=written.storage_saw,
        )

    def ListDocuments(
        self, request: pb.ListDocumentsRequest, context: grpc.ServicerContext
    ) -> pb.DocumentList:
        with self._storage() as storage:
            return storage.List(pb.ListRequest())

    def Upload(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> pb.PutDocumentResponse:
        with self._storage() as storage:
            written = storage.WriteStream(request_iterator)
        return pb.PutDocumentResponse(
            size=written.size, front_saw=caller_identity(), storage_saw=written.storage_saw
        )

    def Download(
        self, request: pb.GetDocumentRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        with self._storage() as storage:
            yield from storage.ReadStream(pb.ReadRequest(name=request.name))

    def WhoAmI(self, request: pb.WhoAmIRequest, context: grpc.ServicerContext) -> pb.Identity:
        return caller_identity()

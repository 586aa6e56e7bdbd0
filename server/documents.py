"""The documents front service. It holds no rights of its own on storage: every storage call
is made while impersonating the caller, and the one channel to storage, made at start without
credentials, is dynamically cloaked: each call goes out as the caller (their delegated
credentials) and storage sees the caller, via [documents]."""

from __future__ import annotations

from collections.abc import Iterator

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
        # One channel (one HTTP/2 connection) for every caller. No credentials: dynamic
        # cloaking. Inside a handler each call uses the caller's delegated credentials, on a
        # binding of that caller's alone (one handshake per caller and delegation), or raises
        # DelegationRequiredError before anything is sent when the caller's context is not
        # delegation level (seed: "WATCH OUT FOR THIS").
        self._channel = secure_channel(
            storage_address,
            target_name=storage_target,
            impersonation=ImpersonationLevel.IMPERSONATE,
            protection=protection,
        )
        self._stub = pb_grpc.StorageStub(self._channel)

    def close(self) -> None:
        """Release every caller's binding at storage, then close the connection."""
        self._channel.close()

    def GetDocument(
        self, request: pb.GetDocumentRequest, context: grpc.ServicerContext
    ) -> pb.Document:
        blob = self._stub.Read(pb.ReadRequest(name=request.name))
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
        written = self._stub.Write(pb.WriteRequest(name=request.name, content=request.content))
        return pb.PutDocumentResponse(
            name=request.name,
            size=written.size,
            front_saw=caller_identity(),
            storage_saw=written.storage_saw,
        )

    def ListDocuments(
        self, request: pb.ListDocumentsRequest, context: grpc.ServicerContext
    ) -> pb.DocumentList:
        return self._stub.List(pb.ListRequest())

    def Upload(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> pb.PutDocumentResponse:
        written = self._stub.WriteStream(request_iterator)
        return pb.PutDocumentResponse(
            size=written.size, front_saw=caller_identity(), storage_saw=written.storage_saw
        )

    def Download(
        self, request: pb.GetDocumentRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        yield from self._stub.ReadStream(pb.ReadRequest(name=request.name))

    def WhoAmI(self, request: pb.WhoAmIRequest, context: grpc.ServicerContext) -> pb.Identity:
        return caller_identity()

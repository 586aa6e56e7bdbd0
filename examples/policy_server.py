"""Authorization, both layers: a per-method policy at the door, a SecurityDescriptor per note.

    python examples/policy_server.py --bundle bundles/notes

* the policy (checked by rpcsec before any handler runs; anything not listed is denied):
  members of group ``staff`` may Read and List; Write also needs a PRIVACY (sealed) call;
* the descriptor (checked by the handler, as the caller, when it opens a note): a note
  belongs to whoever wrote it; others may read it only if the owner shared it
  (``Write`` with text starting ``shared:``).

Refusals reach the client as PERMISSION_DENIED with reason ``access-denied``. Prints
``READY 127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import notes_pb2
import notes_pb2_grpc

import rpcsec
from rpcsec.grpc import AuthorizationPolicy, AuthorizationRule, SecurityInterceptor
from rpcsec.security import EVERYONE, AccessMask, Ace, SecurityDescriptor, access_check
from rpcsec.sspi import (
    AccessDeniedError,
    CredentialUse,
    ProtectionLevel,
    acquire_credentials_handle,
)

# [readme:policy]
POLICY = AuthorizationPolicy(
    [
        AuthorizationRule("/examples.v1.Notes/Read", allow={"group:staff"}),
        AuthorizationRule("/examples.v1.Notes/List", allow={"group:staff"}),
        AuthorizationRule(
            "/examples.v1.Notes/Write",
            allow={"group:staff"},
            min_protection=ProtectionLevel.PRIVACY,
        ),
    ]
)  # every other method, and every caller outside group staff: PERMISSION_DENIED
# [/readme:policy]


class Notes(notes_pb2_grpc.NotesServicer):
    def __init__(self) -> None:
        self._notes: dict[str, tuple[SecurityDescriptor, str]] = {}
        self._lock = threading.Lock()

    def _note(self, name: str, text: str) -> notes_pb2.Note:
        caller = rpcsec.current_token()
        return notes_pb2.Note(
            name=name, text=text, caller=caller.principal, via=list(caller.delegation_chain)
        )

    def Write(self, request, context):
        # [readme:descriptor]
        owner = rpcsec.current_token().principal
        aces = [Ace.allow(owner, AccessMask.ALL)]
        if request.text.startswith("shared:"):
            aces.append(Ace.allow(EVERYONE, AccessMask.READ))
        descriptor = SecurityDescriptor.build(owner, aces)  # deny ACEs sort first
        with self._lock:
            existing = self._notes.get(request.name)
            if existing is not None:
                access_check(existing[0], AccessMask.WRITE)  # as the caller; raises if not
            self._notes[request.name] = (descriptor, request.text)
        # [/readme:descriptor]
        return self._note(request.name, request.text)

    def Read(self, request, context):
        with self._lock:
            entry = self._notes.get(request.name)
        if entry is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no note {request.name!r}")
        access_check(entry[0], AccessMask.READ)  # AccessDeniedError -> PERMISSION_DENIED
        return self._note(request.name, entry[1])

    def List(self, request, context) -> Iterator[notes_pb2.Note]:
        with self._lock:
            notes = sorted(self._notes.items())
        for name, (descriptor, text) in notes:
            try:
                access_check(descriptor, AccessMask.READ)
            except AccessDeniedError:
                continue  # not yours and not shared: not listed
            yield self._note(name, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="x509 identity bundle directory")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    credentials = acquire_credentials_handle(
        "x509", None, CredentialUse.INBOUND, bundle=args.bundle
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[SecurityInterceptor(credentials, policy=POLICY)],
    )
    notes_pb2_grpc.add_NotesServicer_to_server(Notes(), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"READY 127.0.0.1:{port}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=1).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The grpc.aio server: ports, health, reflection, the Sandbox service's handlers, graceful drain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.admin.servicer import ADMIN_SERVICE_NAME, AdminServicer, admin_handler
from sandbox_server.execution.servicer import SandboxServicer, tolerant
from sandbox_server.sessions.servicer import SessionServicer
from sandbox_server.settings import MIB, Settings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Sandbox"].full_name


def _unary(behaviour: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=tolerant(request), response_serializer=response.SerializeToString)


def sandbox_handler(servicer: SandboxServicer, sessions: SessionServicer | None = None) -> grpc.GenericRpcHandler:
    handlers: dict[str, grpc.RpcMethodHandler] = {
        "Execute": grpc.unary_unary_rpc_method_handler(
            servicer.Execute,
            request_deserializer=tolerant(pb.ExecuteRequest),
            response_serializer=pb.ExecuteResult.SerializeToString,
        ),
        "ExecuteStream": grpc.unary_stream_rpc_method_handler(
            servicer.ExecuteStream,
            request_deserializer=tolerant(pb.ExecuteRequest),
            response_serializer=pb.ExecuteEvent.SerializeToString,
        ),
        "RecordUsage": grpc.unary_unary_rpc_method_handler(
            servicer.RecordUsage,
            request_deserializer=tolerant(pb.RecordUsageRequest),
            response_serializer=pb.RecordUsageResponse.SerializeToString,
        ),
        "ListRuntimes": grpc.unary_unary_rpc_method_handler(
            servicer.ListRuntimes,
            request_deserializer=tolerant(pb.ListRuntimesRequest),
            response_serializer=pb.ListRuntimesResponse.SerializeToString,
        ),
    }
    if sessions is not None:
        handlers.update({
            "CreateSession": _unary(sessions.CreateSession, pb.CreateSessionRequest, pb.Session),
            "GetSession": _unary(sessions.GetSession, pb.GetSessionRequest, pb.Session),
            "ListSessions": _unary(sessions.ListSessions, pb.ListSessionsRequest, pb.ListSessionsResponse),
            "CloseSession": _unary(sessions.CloseSession, pb.CloseSessionRequest, pb.Session),
            "UploadFile": grpc.stream_unary_rpc_method_handler(
                sessions.UploadFile, request_deserializer=tolerant(pb.UploadFileRequest),
                response_serializer=pb.FileInfo.SerializeToString),
            "DownloadFile": grpc.unary_stream_rpc_method_handler(
                sessions.DownloadFile, request_deserializer=tolerant(pb.DownloadFileRequest),
                response_serializer=pb.DownloadFileResponse.SerializeToString),
            "ListFiles": _unary(sessions.ListFiles, pb.ListFilesRequest, pb.ListFilesResponse),
            "DeleteFile": _unary(sessions.DeleteFile, pb.DeleteFileRequest, pb.DeleteFileResponse),
            "SnapshotSession": _unary(sessions.SnapshotSession, pb.SnapshotSessionRequest, pb.Snapshot),
            "ListSnapshots": _unary(sessions.ListSnapshots, pb.ListSnapshotsRequest, pb.ListSnapshotsResponse),
            "DeleteSnapshot": _unary(sessions.DeleteSnapshot, pb.DeleteSnapshotRequest, pb.DeleteSnapshotResponse),
        })
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def message_caps(settings: Settings) -> list[tuple[str, Any]]:
    """Message size caps derived from the request caps and output ceilings: no larger message is read."""
    caps = settings.caps
    receive = caps.code_bytes + caps.stdin_bytes + caps.input_file_bytes + caps.env_bytes + 1 * MIB
    send = settings.ceilings.output_bytes + caps.output_file_bytes + 1 * MIB
    return [("grpc.max_receive_message_length", receive), ("grpc.max_send_message_length", send)]


def build_server(
    settings: Settings, servicer: SandboxServicer, admin: AdminServicer,
    interceptors: Sequence[grpc.aio.ServerInterceptor], sessions: SessionServicer | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The server with its handlers and ``interceptors`` (outermost first; see interceptors.build_chain)."""
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[("grpc.so_reuseport", 0), *message_caps(settings)],
        maximum_concurrent_rpcs=None,
    )
    server.add_generic_rpc_handlers((sandbox_handler(servicer, sessions), admin_handler(admin)))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, ADMIN_SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    return server, health_servicer


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS for the server port when a certificate is configured; mTLS when a client CA is too."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    chain = settings.tls_cert_file.read_bytes()
    key = settings.tls_key_file.read_bytes()
    ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=ca is not None)


def forward_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """How this server calls another replica (a session's call forwarded to the server holding it): plaintext
    when it serves plaintext; with TLS, trusting the client CA (mTLS: replicas' certificates come from it, and this
    server presents its own certificate as a client) or else its own certificate chain (a chain ending with its
    CA, or one certificate the replicas share)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    chain = settings.tls_cert_file.read_bytes()
    if settings.tls_client_ca_file is None:
        return grpc.ssl_channel_credentials(root_certificates=chain)
    return grpc.ssl_channel_credentials(root_certificates=settings.tls_client_ca_file.read_bytes(),
                                        private_key=settings.tls_key_file.read_bytes(), certificate_chain=chain)

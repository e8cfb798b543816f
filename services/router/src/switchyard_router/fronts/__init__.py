"""Fronts: where requests come in. The contract every front hands the request path
(``front``) and the gRPC front (``grpc_front``); the HTTP front is ``http_api``.
"""

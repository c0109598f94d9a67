"""Explore qwend with stock grpcio and grpcio-reflection, default channel options.

    python docs/plugins/reflect.py [SOCKET]   (default: $QWEND_SOCKET, else the qwen default)

Lists the services through server reflection, then calls grpc.health.v1.Health/Check with
message classes built from the reflected descriptors: no generated stubs, no options.
Prints one JSON line: {"services": [...], "health": {"": "SERVING", ...}}.
"""
import json
import os
import sys
import tempfile

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def default_socket():
    if os.environ.get("QWEND_SOCKET"):
        return os.environ["QWEND_SOCKET"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "qwend", "qwend.sock")
    return os.path.join(tempfile.gettempdir(), f"qwend-{os.getuid()}", "qwend.sock")


def main():
    socket = sys.argv[1] if len(sys.argv) > 1 else default_socket()
    channel = grpc.insecure_channel(f"unix://{socket}")
    db = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(db.get_services())
    pool = descriptor_pool.DescriptorPool(db)
    method = pool.FindServiceByName("grpc.health.v1.Health").FindMethodByName("Check")
    request, response = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=request.SerializeToString,
        response_deserializer=response.FromString,
    )
    names = response.DESCRIPTOR.fields_by_name["status"].enum_type.values_by_number
    health = {
        s: names[check(request(service=s), timeout=10).status].name
        for s in ("", "qwend.v1.Daemon")
    }
    print(json.dumps({"services": services, "health": health}), flush=True)


if __name__ == "__main__":
    main()

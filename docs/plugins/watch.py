"""A qwend plugin client in Python: grpcio over the daemon's Unix socket.

    python docs/plugins/watch.py [SOCKET]   (default: $QWEND_SOCKET, else the qwen default)

Prints one JSON line for Status, then one per event, until the daemon shuts down.
The stubs are generated from proto/ at start (grpcio-tools), so nothing is vendored.
"""
import json
import os
import sys
import tempfile

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "..", "..", "proto")


def load_stubs():
    out = tempfile.mkdtemp(prefix="qwend-py-")
    files = [f"qwend/v1/{n}.proto" for n in ("common", "daemon", "events", "auth")]
    import grpc_tools

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        sys.exit(f"protoc failed ({rc})")
    sys.path.insert(0, out)
    from qwend.v1 import daemon_pb2, daemon_pb2_grpc, events_pb2, events_pb2_grpc  # noqa: E402

    return daemon_pb2, daemon_pb2_grpc, events_pb2, events_pb2_grpc


def default_socket():
    if os.environ.get("QWEND_SOCKET"):
        return os.environ["QWEND_SOCKET"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "qwend", "qwend.sock")
    return os.path.join(tempfile.gettempdir(), f"qwend-{os.getuid()}", "qwend.sock")


def main():
    socket = sys.argv[1] if len(sys.argv) > 1 else default_socket()
    daemon_pb2, daemon_grpc, events_pb2, events_grpc = load_stubs()
    channel = grpc.insecure_channel(f"unix://{socket}")
    try:
        status = daemon_grpc.DaemonStub(channel).Status(daemon_pb2.StatusRequest(), timeout=5)
    except grpc.RpcError as e:
        print(f"qwend unreachable at {socket}: {e.details()}", file=sys.stderr)
        sys.exit(5)
    print(json.dumps({"status": MessageToDict(status)}), flush=True)
    stream = events_grpc.EventsStub(channel).Watch(events_pb2.WatchRequest())
    stream.initial_metadata()  # the subscription is open from here on
    print(json.dumps({"subscribed": True}), flush=True)
    for ev in stream:
        print(json.dumps({"event": MessageToDict(ev)}), flush=True)


if __name__ == "__main__":
    main()

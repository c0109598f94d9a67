// A qwend plugin client in Node, as a VS Code extension would write it: @grpc/grpc-js and
// @grpc/proto-loader over the daemon's Unix socket.
//
//   node docs/plugins/watch.mjs [SOCKET]      (default: $QWEND_SOCKET, else the qwen default)
//
// Prints one JSON line for Status, then one per event, until the daemon shuts down.
import { createRequire } from "node:module";
import path from "node:path";
import os from "node:os";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const here = path.dirname(fileURLToPath(import.meta.url));
const protoDir = path.join(here, "..", "..", "proto");
const socket =
  process.argv[2] ||
  process.env.QWEND_SOCKET ||
  (process.env.XDG_RUNTIME_DIR
    ? path.join(process.env.XDG_RUNTIME_DIR, "qwend", "qwend.sock")
    : path.join(os.tmpdir(), `qwend-${process.getuid()}`, "qwend.sock"));

const def = loader.loadSync(
  ["qwend/v1/daemon.proto", "qwend/v1/events.proto", "qwend/v1/auth.proto"],
  { includeDirs: [protoDir], keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true },
);
const api = grpc.loadPackageDefinition(def).qwend.v1;
const target = `unix://${socket}`;
const creds = grpc.credentials.createInsecure();
const daemon = new api.Daemon(target, creds);
const events = new api.Events(target, creds);

daemon.Status({}, (err, status) => {
  if (err) {
    console.error(`qwend unreachable at ${socket}: ${err.message}`);
    process.exit(5);
  }
  console.log(JSON.stringify({ status }));
  const stream = events.Watch({});
  stream.on("data", (ev) => console.log(JSON.stringify({ event: ev })));
  stream.on("end", () => process.exit(0));
  stream.on("error", (e) => {
    console.error(e.message);
    process.exit(1);
  });
  // The stream is open once metadata arrives; tests wait for this line.
  stream.on("metadata", () => console.log(JSON.stringify({ subscribed: true })));
});

// A Node.js app on the original's socket.io-client line (1.x or 2.x, Engine.IO 3).
// Usage: node legacy.js '{"client": "v2", "url": "...", "transports": ["polling"],
//                         "user": "u", "connectionId": "c", "count": 3}'
// Prints one JSON line per event: {"ack": ...}, {"message": ..., "meta": ...}, then exits
// after `count` messages.
const options = JSON.parse(process.argv[2]);
const io = require(options.client === "v1" ? "socket.io-client-v1" : "socket.io-client-v2");
const socket = io(options.url, { transports: options.transports, forceNew: true });
let received = 0;
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");
socket.on("connect", () => {
  socket.emit("register", options.user, options.connectionId, (ack) => print({ ack }));
});
socket.on("message", (message, meta) => {
  print({ message, meta, transport: socket.io.engine.transport.name });
  received += 1;
  if (received >= options.count) {
    socket.disconnect();
    process.exit(0);
  }
});
socket.on("connect_error", (error) => print({ error: String(error) }));
socket.on("disconnect", (reason) => print({ disconnected: reason }));
setTimeout(() => { print({ error: "timed out" }); process.exit(1); }, 30000);

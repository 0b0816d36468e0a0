// Crowds of official socket.io clients against a running server, for tests/test_hardening.py
// and bench/soak.py. Usage: node crowd.js '{"mode": "churn"|"idle", "url": ..., "token": ...}'
//
// churn: `cycles` times (`concurrency` at once): the backend registers a fresh connection,
//   a client connects, claims it, receives one push, and disconnects. After `checkpoint`
//   cycles it prints {"checkpoint": n} and waits for a line on stdin before going on.
// idle: `sessions` clients connect and claim, then stay idle for `holdSeconds`; it prints
//   how many are still connected and how many disconnects happened meanwhile.
"use strict";
const {io} = require("socket.io-client");
const readline = require("readline");

const options = JSON.parse(process.argv[2]);
const transports = [options.transport || "websocket"];
const headers = {"X-AUTH-TOKEN": options.token, "Content-Type": "application/json"};
const print = (object) => process.stdout.write(JSON.stringify(object) + "\n");

async function rest(method, path, body) {
  const response = await fetch(options.url + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

function claim(user, connectionId) {
  const socket = io(options.url, {transports, reconnection: false, forceNew: true});
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no register ack")), 30000);
    socket.on("connect_error", reject);
    socket.on("connect", () => {
      socket.emit("register", user, connectionId, (ack) => {
        clearTimeout(timer);
        ack.ok ? resolve(socket) : reject(new Error(ack.error));
      });
    });
  });
}

async function cycle(n) {
  const user = `churn-${n % (options.users || 1000)}`;
  const connectionId = `c-${n}-${Math.random().toString(36).slice(2)}`;
  await rest("PUT", `/api/${user}/register?connectionId=${connectionId}`);
  const socket = await claim(user, connectionId);
  const received = new Promise((resolve) => socket.once("message", (message) => resolve(message)));
  await rest("POST", `/api/${user}/push`, {message: {n}});
  const message = await received;
  if (message.n !== n) throw new Error(`cycle ${n} received ${JSON.stringify(message)}`);
  socket.disconnect();
}

async function churn() {
  let next = 0;
  const run = async (stop) => {
    const workers = Array.from({length: options.concurrency || 20}, async () => {
      while (next < stop) await cycle(next++);
    });
    await Promise.all(workers);
  };
  const started = Date.now();
  await run(options.checkpoint);
  print({checkpoint: next});
  await new Promise((resolve) => readline.createInterface({input: process.stdin}).once("line", resolve));
  await run(options.cycles);
  print({cycles: next, seconds: (Date.now() - started) / 1000});
}

async function idle() {
  let disconnects = 0;
  const sockets = [];
  for (let i = 0; i < options.sessions; i += 50) {
    const batch = Array.from({length: Math.min(50, options.sessions - i)}, async (_, j) => {
      const user = `idle-${i + j}`, connectionId = `idle-c-${i + j}`;
      await rest("PUT", `/api/${user}/register?connectionId=${connectionId}`);
      const socket = await claim(user, connectionId);
      socket.on("disconnect", () => disconnects++);
      sockets.push(socket);
    });
    await Promise.all(batch);
  }
  print({opened: sockets.length});
  await new Promise((resolve) => setTimeout(resolve, options.holdSeconds * 1000));
  print({connected: sockets.filter((s) => s.connected).length, disconnects});
  sockets.forEach((s) => s.disconnect());
}

(options.mode === "churn" ? churn() : idle()).then(
  () => process.exit(0),
  (error) => { console.error(error.stack || error); process.exit(1); });

// The reference peer: the original notification-socket.io's API (REST + Socket.IO) on
// Express 4 and Socket.IO 4, as a team would run it instead of notification-socketio.
// Written for the benchmark only: no history, no recovery. With REDIS_URL it runs as a
// Socket.IO deployment of several processes would: the official Redis adapter
// (@socket.io/redis-adapter), a room per user, pushes emitted to the user's room. With
// REDIS_CLUSTER_NODES (comma-separated redis:// URLs of a Redis Cluster's primaries) it runs
// the same adapter's sharded form, for Redis 7's shard channels, on a cluster client.
'use strict';
const http = require('http');
const express = require('express');
const { Server } = require('socket.io');

const app = express();
app.use(express.urlencoded({ extended: true }));
app.use(express.json({ limit: '64kb' }));
const server = http.createServer(app);
const io = new Server(server, { cors: { origin: '*' } });
const token = process.env.AUTH_TOKEN;
const clusterNodes = process.env.REDIS_CLUSTER_NODES;
const redisUrl = process.env.REDIS_URL || clusterNodes;
let ready = Promise.resolve();
if (clusterNodes) {
  const { createCluster } = require('redis');
  const { createShardedAdapter } = require('@socket.io/redis-adapter');
  const pub = createCluster({ rootNodes: clusterNodes.split(',').map((url) => ({ url })) });
  const sub = pub.duplicate();
  ready = Promise.all([pub.connect(), sub.connect()]).then(() => {
    io.adapter(createShardedAdapter(pub, sub));
  });
} else if (redisUrl) {
  const { createClient } = require('redis');
  const { createAdapter } = require('@socket.io/redis-adapter');
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  ready = Promise.all([pub.connect(), sub.connect()]).then(() => {
    io.adapter(createAdapter(pub, sub));
  });
}
const connections = new Map();   // userId -> Map(connectionId -> socket or null)

function authorized(req, res) {
  if (req.get('X-AUTH-TOKEN') !== token) {
    res.status(401).end();
    return false;
  }
  return true;
}

io.on('connection', (socket) => {
  socket.on('register', (userId, connectionId, ack) => {
    const user = connections.get(userId);
    const ok = Boolean(user && user.has(connectionId) && user.get(connectionId) === null);
    if (ok) {
      user.set(connectionId, socket);
      socket.data.registration = [userId, connectionId];
      if (redisUrl) socket.join(`user:${userId}`);
    }
    if (typeof ack === 'function') ack({ ok });
  });
  socket.on('disconnect', () => {
    const registration = socket.data.registration;
    if (!registration) return;
    const user = connections.get(registration[0]);
    if (user && user.get(registration[1]) === socket) user.set(registration[1], null);
  });
});

app.put('/api/:userId/register', (req, res) => {
  if (!authorized(req, res)) return;
  const { userId } = req.params;
  const { connectionId } = req.query;
  if (!connectionId) return res.status(400).send('Bad Request');
  if (!connections.has(userId)) connections.set(userId, new Map());
  connections.get(userId).set(connectionId, null);
  res.end();
});

app.post('/api/:userId/push', (req, res) => {
  if (!authorized(req, res)) return;
  const message = req.body && req.body.message;
  if (message === undefined || message === null) return res.status(400).send('Bad Request');
  if (redisUrl) {
    io.to(`user:${req.params.userId}`).emit('message', message);
    return res.end();
  }
  const user = connections.get(req.params.userId);
  if (user) {
    for (const socket of user.values()) {
      if (socket) socket.emit('message', message);
    }
  }
  res.end();
});

app.get('/api/status/ping', (req, res) => res.send('pong'));

ready.then(() => server.listen(Number(process.env.PORT || 3000), '127.0.0.1'));

"""A backend's webhook endpoint for notification-socketio, in Flask.

    WEBHOOK_SECRET=<the server's WEBHOOK_SECRET> flask --app examples/webhook_receiver.py \
        run --port 5001

and start the server with WEBHOOK_URL=http://127.0.0.1:5001/notification-webhooks.

It checks the signature before anything else (the HMAC-SHA256 of "<t>.<raw body>"),
refuses a timestamp more than five minutes away (a replayed call), and handles each event
id once: delivery is at least once, so the same event may come again after a timeout.
It needs nothing but Flask and the standard library.
"""
import hashlib
import hmac
import json
import os
import time

from flask import Flask, abort, request

WEBHOOK_SECRET = os.environ['WEBHOOK_SECRET'].encode()
TOLERANCE = 300   # seconds between the signature's time and now
app = Flask(__name__)
handled = {}      # event id -> when; use your database (a unique key) in production


def signature_ok(header, body):
    """True if `header` (X-Notification-Signature) signs `body` (the raw bytes), lately."""
    fields = {}
    for part in header.split(','):
        name, _, value = part.strip().partition('=')
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields['t'][0])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > TOLERANCE:
        return False
    expected = hmac.new(WEBHOOK_SECRET, b'%d.' % timestamp + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, given) for given in fields.get('v1', []))


@app.post('/notification-webhooks')
def notification_webhooks():
    body = request.get_data()   # the raw bytes: re-encoding the JSON would change them
    if not signature_ok(request.headers.get('X-Notification-Signature', ''), body):
        abort(400)
    event = json.loads(body)
    if event['id'] in handled:
        return '', 204          # a repeat: done already
    data = event['data']
    if event['type'] == 'user.online':
        app.logger.info('%s is online', data['userId'])
    elif event['type'] == 'user.offline':
        app.logger.info('%s is offline', data['userId'])
    elif event['type'] == 'message.unacknowledged':
        # Nobody read it in time: send it by e-mail or mobile push instead.
        app.logger.info('message %s to %s was not received: %s', data['id'],
                        data['userId'], data['message'])
    handled[event['id']] = time.time()
    return '', 204              # any 2xx; anything else makes the server try again

"""A team's Flask backend, wired to notification-socketio the way one would in production.

    NOTIFICATION_URL=http://127.0.0.1:3000 NOTIFICATION_TOKEN=change-me \
        flask --app examples/flask_backend/app.py run --port 5000

then open http://127.0.0.1:5000/?user=alice and, in another terminal,
`curl -X POST 'http://127.0.0.1:5000/orders?user=alice'`.

The token stays on the backend. The browser asks the backend for a connection: the
backend registers a fresh connectionId for the logged-in user (here, for the demo, the
`user` query parameter stands for the login) and hands it to the page, which claims it
over Socket.IO. Business events then push to the user through the REST API.
"""
import os
import secrets
from pathlib import Path
from urllib.parse import quote

import requests
from flask import Flask, abort, jsonify, request, send_file

NOTIFICATION_URL = os.environ.get('NOTIFICATION_URL', 'http://127.0.0.1:3000').rstrip('/')
NOTIFICATION_TOKEN = os.environ['NOTIFICATION_TOKEN']
# Where the page loads the socket.io client from: the notification server's own path by
# default, as pages written for the original did (it serves its copy, or redirects to the
# official build on the CDN).
SOCKETIO_CLIENT_URL = os.environ.get('SOCKETIO_CLIENT_URL',
                                     NOTIFICATION_URL + '/socket.io/socket.io.min.js')
PAGE = Path(__file__).resolve().parent.parent / 'browser' / 'index.html'

app = Flask(__name__)
notifications = requests.Session()
notifications.headers['X-AUTH-TOKEN'] = NOTIFICATION_TOKEN


def current_user():
    """Stands for the application's login: a real backend reads its own session here."""
    user = request.args.get('user', '').strip()
    if not user:
        abort(401)
    return user


@app.get('/')
def page():
    return send_file(PAGE)


@app.get('/notifications/session')
def notification_session():
    """Register a fresh connection for the user and tell the page how to claim it."""
    user = current_user()
    connection_id = secrets.token_urlsafe(24)
    response = notifications.put(f'{NOTIFICATION_URL}/api/{quote(user, safe="")}/register',
                                 params={'connectionId': connection_id}, timeout=5)
    response.raise_for_status()
    return jsonify(url=NOTIFICATION_URL, userId=user, connectionId=connection_id,
                   clientUrl=SOCKETIO_CLIENT_URL)


@app.post('/orders')
def place_order():
    """A business event: tell the user, on every tab they have open."""
    user = current_user()
    order = {'type': 'order-placed', 'order': secrets.token_hex(4)}
    response = notifications.post(f'{NOTIFICATION_URL}/api/{quote(user, safe="")}/push',
                                  json={'message': order}, timeout=5)
    response.raise_for_status()
    return jsonify(order=order, messageId=response.json()['id'])


if __name__ == '__main__':
    app.run(port=int(os.environ.get('PORT', 5000)))

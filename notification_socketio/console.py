"""GET /console: a page to try the server in a browser (CONSOLE=0 turns it off).

The page registers a connection through the REST API with the token a person pastes in,
connects with the official socket.io client, and shows what arrives. The token stays in
the page's memory: never in the URL, a cookie or storage. The client script is loaded
from SOCKETIO_CLIENT_URL with its integrity hash; nothing else leaves the server's origin.
"""
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, render_template

bp = Blueprint('console', __name__, template_folder='templates')


@bp.get('/console')
def console():
    """The console page; 404 when CONSOLE=0."""
    config = current_app.extensions['notification_socketio'].config
    if not config.console:
        abort(404)
    nonce = secrets.token_urlsafe(16)
    page = render_template('console.html', nonce=nonce,
                           client_url=config.socketio_client_url,
                           client_integrity=config.socketio_client_integrity,
                           ping_interval=config.ping_interval)
    script_source = _origin(config.socketio_client_url)
    return page, 200, {
        'Content-Type': 'text/html; charset=utf-8',
        'Cache-Control': 'no-store',
        'Referrer-Policy': 'no-referrer',
        'X-Content-Type-Options': 'nosniff',
        'X-Frame-Options': 'DENY',
        'Content-Security-Policy': (
            f"default-src 'self'; script-src 'nonce-{nonce}' {script_source}; "
            f"style-src 'nonce-{nonce}'; connect-src 'self' ws: wss:; img-src 'self' data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    }


def _origin(url):
    """The CSP source that allows the client script: its origin, or 'self' for a path."""
    parts = urlsplit(url)
    return f'{parts.scheme}://{parts.netloc}' if parts.netloc else "'self'"

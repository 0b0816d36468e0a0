"""Read by a bare `gunicorn wsgi:app` run from this folder; the settings live in the package."""
from notification_socketio.gunicorn_conf import *  # noqa: F401,F403

"""The WSGI entry point: `gunicorn wsgi:app` (settings in gunicorn.conf.py)."""
from gevent import monkey

monkey.patch_all()

from notification_socketio import create_app  # noqa: E402  (after monkey-patching)

app = create_app()

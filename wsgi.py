"""The WSGI entry point: `gunicorn wsgi:app` (settings in gunicorn.conf.py)."""
from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402  (everything after monkey-patching)

from notification_socketio import create_app  # noqa: E402
from notification_socketio.config import ConfigError  # noqa: E402

try:
    app = create_app()
except ConfigError as error:
    sys.stderr.write(f'notification-socketio: {error}\n')
    # Exit code 3 is gunicorn's "worker failed to boot": the master stops, not retries.
    sys.exit(3)

"""Logging: one line per event, as text or as JSON objects (LOG_FORMAT)."""
import json
import logging
import sys

PACKAGE_LOGGER = 'notification_socketio'


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the traceback, if any)."""

    def format(self, record):
        line = {'ts': self.formatTime(record, '%Y-%m-%dT%H:%M:%S'),
                'level': record.levelname.lower(),
                'logger': record.name,
                'message': record.getMessage()}
        if record.exc_info:
            line['exc'] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(config):
    """Send the server's own log lines to stderr in the configured format, once."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.setLevel(logging.INFO)
    if not any(getattr(h, '_notification_socketio', False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler._notification_socketio = True
        logger.addHandler(handler)
        logger.propagate = False
    handler = next(h for h in logger.handlers if getattr(h, '_notification_socketio', False))
    handler.setFormatter(JsonFormatter() if config.log_format == 'json' else
                         logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
    # gevent-websocket logs every request line, query string (connectionId) included.
    logging.getLogger('geventwebsocket.handler').setLevel(logging.WARNING)

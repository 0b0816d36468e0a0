"""Logging: one line per event, as text or as JSON objects (LOG_FORMAT)."""
import json
import logging
import sys

PACKAGE_LOGGER = 'notification_socketio'
# Control characters (C0, DEL, C1) and Unicode line breaks, as escapes: a userId holding a
# newline must not start a line of its own.
_ESCAPES = {code: f'\\x{code:02x}' for code in (*range(0x20), *range(0x7f, 0xa0))}
_ESCAPES.update({ord('\n'): '\\n', ord('\r'): '\\r', ord('\t'): '\\t',
                 0x2028: '\\u2028', 0x2029: '\\u2029'})


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, one line per event whatever the message holds.

    Ids chosen by clients and backends reach messages as they are: their control
    characters are escaped here, as JSON lines escape them. A traceback keeps its lines.
    """

    def __init__(self):
        super().__init__('%(asctime)s %(levelname)s %(name)s: %(message)s')

    def formatMessage(self, record):
        record.message = record.message.translate(_ESCAPES)
        return super().formatMessage(record)


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
    handler.setFormatter(formatter(config.log_format))
    # gevent-websocket logs every request line, query string (connectionId) included.
    logging.getLogger('geventwebsocket.handler').setLevel(logging.WARNING)


def formatter(log_format):
    """The formatter of LOG_FORMAT `log_format`: 'json' or 'text'."""
    return JsonFormatter() if log_format == 'json' else TextFormatter()


def gunicorn_logger(log_format):
    """gunicorn's logger class (its `logger_class` setting), writing in `log_format`.

    Only the formatters change: gunicorn still decides where its lines go, and writes
    access lines only when --access-logfile asks for them.
    """
    from gunicorn.glogging import Logger

    class GunicornLogger(Logger):
        def setup(self, cfg):
            super().setup(cfg)
            for logger in (self.error_log, self.access_log):
                for handler in logger.handlers:
                    handler.setFormatter(formatter(log_format))

    return GunicornLogger

"""Log lines: one event a line, whatever the ids that clients and backends choose."""
import logging

import pytest

from conftest import TOKEN, wait_for
from notification_socketio.config import Config
from notification_socketio.logs import configure_logging

import requests

FORGED = 'x\n2026-01-01 00:00:00,000 INFO notification_socketio.api: FORGED admin login\r'


def _format(log_format, user_id):
    configure_logging(Config.for_testing(log_format=log_format))
    handler = next(h for h in logging.getLogger('notification_socketio').handlers
                   if getattr(h, '_notification_socketio', False))
    record = logging.LogRecord('notification_socketio.api', logging.INFO, __file__, 1,
                               'registered connection %s for user %s', ('ab***', user_id),
                               None)
    return handler.format(record)


def test_text_lines_escape_control_characters_in_ids():
    line = _format('text', FORGED + '\x1b[31m\u2028')
    assert '\n' not in line and '\r' not in line and '\x1b' not in line
    assert '\u2028' not in line
    assert '\\n2026-01-01' in line and '\\x1b[31m' in line


def test_json_lines_stay_one_object_a_line():
    line = _format('json', FORGED)
    assert '\n' not in line and 'FORGED' in line


def test_a_user_id_cannot_forge_a_line_in_the_real_server_log(start_server):
    server = start_server(env={'LOG_FORMAT': 'text'}, args=['--access-logfile', '-'])
    response = requests.put(f'{server.url}/api/{requests.utils.quote(FORGED, safe="")}'
                            '/register', params={'connectionId': 'tab'},
                            headers={'X-AUTH-TOKEN': TOKEN}, timeout=10)
    assert response.status_code == 200
    # This request's own access line: the start-up ping's comes first, and gunicorn
    # writes a request's line only after the response has gone out.
    wait_for(lambda: any('gunicorn.access' in line and 'register' in line
                         for line in server.log().splitlines()),
             message='the access line of the registration')
    lines = server.log().splitlines()
    assert not [line for line in lines if line.startswith('2026-01-01')]
    escaped = [line for line in lines if '\\n2026-01-01' in line]
    assert {line.split()[3] for line in escaped} == {'notification_socketio.api:',
                                                      'gunicorn.access:'}


@pytest.mark.parametrize('log_format', ['text', 'json'])
def test_no_access_lines_unless_asked_for(start_server, log_format):
    # One line per request costs a write per push: off unless --access-logfile.
    server = start_server(env={'LOG_FORMAT': log_format})
    assert server.push('someone', 'hello').status_code == 200
    assert requests.get(server.url + '/api/status/info', timeout=10).status_code == 200
    log = server.log()
    assert 'Booting worker' in log
    assert '/api/status/info' not in log and 'gunicorn.access' not in log

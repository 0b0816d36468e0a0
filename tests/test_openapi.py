"""/api/openapi.json stays true: fuzzed by schemathesis, and every documented status produced."""
import copy
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import requests

from conftest import TOKEN
from notification_socketio.openapi import DOCUMENT
from notification_socketio.validation import MAX_ID_LENGTH

TOO_LONG = 'u' * (MAX_ID_LENGTH + 1)
BIG = {'message': 'x' * 70_000}
AUTH = {'X-AUTH-TOKEN': TOKEN}


def keyed(key):
    """The token and an Idempotency-Key: a key names one push, on one route."""
    return {**AUTH, 'Idempotency-Key': key}
PUSHES = [route for route in (('/api/{userId}/push', 'post'), ('/api/push', 'post'),
                              ('/api/broadcast', 'post'))]

# (path, method) -> {status: request}; a request is (url path, keyword arguments).
CASES = {
    ('/api/status/ping', 'get'): {200: ('/api/status/ping', {})},
    ('/api/status/info', 'get'): {200: ('/api/status/info', {})},
    ('/api/openapi.json', 'get'): {200: ('/api/openapi.json', {})},
    ('/metrics', 'get'): {200: ('/metrics', {})},
    ('/console', 'get'): {200: ('/console', {})},
    ('/api/{userId}/register', 'put'): {
        200: ('/api/u1/register?connectionId=c1', {'headers': AUTH}),
        400: ('/api/u1/register', {'headers': AUTH}),
        401: ('/api/u1/register?connectionId=c1', {}),
    },
    ('/api/{userId}/register', 'delete'): {
        200: ('/api/u1/register?connectionId=c1', {'headers': AUTH}),
        400: ('/api/u1/register?connectionId=', {'headers': AUTH}),
        401: ('/api/u1/register?connectionId=c1', {}),
    },
    ('/api/{userId}/push', 'post'): {
        200: ('/api/u1/push', {'headers': keyed('one'), 'json': {'message': {'a': 1}}}),
        400: ('/api/u1/push', {'headers': AUTH, 'json': {'text': 'no message'}}),
        401: ('/api/u1/push', {'json': {'message': 1}}),
        409: ('/api/u1/push', {'headers': keyed('one'), 'json': {'message': 'another'}}),
        413: ('/api/u1/push', {'headers': AUTH, 'json': BIG}),
    },
    ('/api/push', 'post'): {
        200: ('/api/push', {'headers': keyed('many'),
                            'json': {'users': ['u1', 'u2'], 'message': 1}}),
        400: ('/api/push', {'headers': AUTH, 'json': {'users': [], 'message': 1}}),
        401: ('/api/push', {'json': {'users': ['u1'], 'message': 1}}),
        409: ('/api/push', {'headers': keyed('many'), 'json': {'users': ['u2'], 'message': 1}}),
        413: ('/api/push', {'headers': AUTH, 'json': {'users': ['u1'], **BIG}}),
    },
    ('/api/broadcast', 'post'): {
        200: ('/api/broadcast', {'headers': keyed('all'), 'data': {'message': 'form'}}),
        400: ('/api/broadcast', {'headers': AUTH, 'data': b'{"message": '}),
        401: ('/api/broadcast', {'json': {'message': 1}}),
        409: ('/api/broadcast', {'headers': keyed('all'), 'data': {'message': 'other'}}),
        413: ('/api/broadcast', {'headers': AUTH, 'json': BIG}),
    },
    ('/api/{userId}/messages/{id}', 'get'): {
        200: (lambda server: f'/api/u1/messages/{server.pushed("u1", "m")}',
              {'headers': AUTH}),
        400: ('/api/u1/messages/not-an-id', {'headers': AUTH}),
        401: ('/api/u1/messages/1-0', {}),
        404: ('/api/u1/messages/1-0', {'headers': AUTH}),
    },
    ('/api/webhooks', 'get'): {
        200: ('/api/webhooks', {'headers': AUTH}),
        401: ('/api/webhooks', {}),
    },
    ('/api/{userId}/sessions', 'get'): {
        200: ('/api/u1/sessions', {'headers': AUTH}),
        400: (f'/api/{TOO_LONG}/sessions', {'headers': AUTH}),
        401: ('/api/u1/sessions', {}),
    },
    ('/api/{userId}/sessions', 'delete'): {
        200: ('/api/u1/sessions', {'headers': AUTH}),
        400: (f'/api/{TOO_LONG}/sessions', {'headers': AUTH}),
        401: ('/api/u1/sessions', {}),
    },
}
# With Redis stopped, every route that needs the state answers 503.
UNAVAILABLE = {route: statuses[200] for route, statuses in CASES.items()
               if '503' in DOCUMENT['paths'][route[0]][route[1]]['responses']}


def documented_statuses():
    return {(path, method, int(status))
            for path, operations in DOCUMENT['paths'].items()
            for method, operation in operations.items() if method != 'parameters'
            for status in operation['responses']}


# Statuses that need a scene of their own, produced by the test named.
SCENES = {('/api/{userId}/register', 'put', 429):
          'test_register_past_the_session_limit_is_429_as_documented',
          **{(path, method, 504): 'test_a_push_redis_did_not_answer_is_504_as_documented'
             for path, method in PUSHES}}


def test_the_cases_cover_every_documented_status():
    covered = {(path, method, status) for (path, method), statuses in CASES.items()
               for status in statuses} | set(SCENES)
    covered |= {(path, method, 503) for path, method in UNAVAILABLE}
    assert covered == documented_statuses()


def check(response, path, method):
    """The response has a documented status, content type and body."""
    responses = DOCUMENT['paths'][path][method]['responses']
    documented = responses.get(str(response.status_code))
    assert documented is not None, (path, method, response.status_code, response.text)
    [(media_type, content)] = documented['content'].items()
    assert response.headers['Content-Type'].split(';')[0] == media_type
    body = response.json() if media_type == 'application/json' else response.text
    jsonschema.validate(body, inline_refs(content['schema']),
                        cls=jsonschema.Draft202012Validator)


def inline_refs(schema):
    """The schema with its `#/components/...` references replaced by what they name."""
    if isinstance(schema, dict):
        if '$ref' in schema:
            _, section, kind, name = schema['$ref'].split('/')
            return inline_refs(DOCUMENT[section][kind][name])
        return {key: inline_refs(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [inline_refs(item) for item in schema]
    return copy.deepcopy(schema)


def test_every_documented_status_is_produced_as_documented(redis_server, start_server):
    server = start_server(env={'REDIS_URL': redis_server.url})
    for (path, method), statuses in CASES.items():
        for status, (url, options) in statuses.items():
            url = url(server) if callable(url) else url
            response = requests.request(method, server.url + url, timeout=10, **options)
            assert response.status_code == status, (method, url, response.text)
            check(response, path, method)
    redis_server.stop()
    for (path, method), (url, options) in UNAVAILABLE.items():
        url = '/api/u1/messages/1-0' if callable(url) else url
        response = requests.request(method, server.url + url, timeout=30, **options)
        assert response.status_code == 503, (method, url, response.text)
        check(response, path, method)


def test_a_push_redis_did_not_answer_is_504_as_documented(
        redis_server, proxies, start_server):
    proxy = proxies(redis_server.port)
    server = start_server(env={'REDIS_URL': f'redis://127.0.0.1:{proxy.port}/0'})
    for path, method in PUSHES:
        url, options = CASES[(path, method)][200]
        assert requests.request(method, server.url + url, timeout=10, **options).ok
        proxy.mute()
        response = requests.request(method, server.url + url, timeout=30,
                                    **{**options, 'headers': AUTH})
        assert response.status_code == 504, response.text
        check(response, path, method)
        proxy.restore()


def test_register_past_the_session_limit_is_429_as_documented(start_server, listeners):
    server = start_server(env={'MAX_SESSIONS_PER_USER': '2'})
    for connection_id in ('c1', 'c2'):
        assert server.register('u', connection_id).status_code == 200
        assert listeners(server.url).connect().register('u', connection_id) == {'ok': True}
    response = server.register('u', 'c3')
    assert response.status_code == 429
    check(response, '/api/{userId}/register', 'put')
    assert 'MAX_SESSIONS_PER_USER' in response.json()['error']


def test_schemathesis_finds_nothing_wrong(server, tmp_path):
    schemathesis = Path(sys.executable).parent / 'schemathesis'
    if not schemathesis.exists():
        pytest.fail('schemathesis is not installed: pip install -e ".[test]"')
    result = subprocess.run(
        [str(schemathesis), 'run', server.url + '/api/openapi.json', '--checks', 'all',
         '-H', f'X-AUTH-TOKEN: {TOKEN}', '--max-examples', '30', '--seed', '20261128',
         # One worker: on a fresh virtualenv, two threads compiling schemathesis's modules
         # at once hit CPython 3.11's "AST constructor recursion depth mismatch".
         '--workers', '1'],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert 'Tested: 13' in result.stdout

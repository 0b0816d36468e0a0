"""In real Chromium: the console page, and a team's page served from another origin.

Debian's /usr/bin/chromium driven by playwright (never a browser download); the official
socket.io client comes from the npm registry through tests/js/package.json and is
served to the pages from a local origin, as a CDN would. Every test saves a screenshot
in tests/artifacts/.
"""
import base64
import hashlib
import os
import subprocess
import sys
import threading
import uuid
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from conftest import ROOT, TOKEN, free_port, missing, wait_for
from notification_socketio.config import DEFAULT_CLIENT_INTEGRITY

CHROMIUM = '/usr/bin/chromium'
ARTIFACTS = ROOT / 'tests' / 'artifacts'
QUIET_CHROMIUM = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update',
                  '--disable-sync', '--disable-dev-shm-usage']
TIMEOUT_MS = 20_000


@pytest.fixture(scope='session')
def client_js(js_modules):
    """The socket.io client build from npm."""
    return js_modules / 'socket.io-client' / 'dist' / 'socket.io.min.js'


@pytest.fixture(scope='session')
def browser():
    if not Path(CHROMIUM).exists():
        missing('Debian chromium is not installed (apt-get install chromium)')
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=QUIET_CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    """A fresh page; a screenshot of it is saved when the test ends, whatever the outcome."""
    context = browser.new_context(viewport={'width': 1200, 'height': 760})
    page_ = context.new_page()
    page_.set_default_timeout(TIMEOUT_MS)
    yield page_
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page_.screenshot(path=ARTIFACTS / f'{request.node.name}.png', full_page=True)
    context.close()


@pytest.fixture
def cdn(client_js):
    """Another origin serving the socket.io client, as cdn.socket.io would."""
    handler = partial(_QuietHandler, directory=str(client_js.parent))
    server = ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{server.server_address[1]}/{client_js.name}'
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    """Static files with the CORS header a CDN sends (integrity checks need it)."""

    def end_headers(self):
        self.send_header('Access-Control-Allow-Origin', '*')
        super().end_headers()

    def log_message(self, *args):
        pass


def sri(path):
    return 'sha384-' + base64.b64encode(hashlib.sha384(path.read_bytes()).digest()).decode()


@pytest.fixture
def example_backend():
    """Start examples/flask_backend/app.py against a server; stopped after the test."""
    started = []

    def start(server_url, client_url):
        port = free_port()
        env = {**os.environ, 'PORT': str(port), 'NOTIFICATION_URL': server_url,
               'NOTIFICATION_TOKEN': TOKEN, 'SOCKETIO_CLIENT_URL': client_url}
        log = open(ARTIFACTS / f'example-backend-{port}.log', 'wb')
        process = subprocess.Popen([sys.executable, 'examples/flask_backend/app.py'], cwd=ROOT,
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(process)
        url = f'http://127.0.0.1:{port}'

        def answers():
            assert process.poll() is None, 'the example backend exited'
            try:
                return requests.get(url + '/?user=x', timeout=1).ok
            except requests.RequestException:
                return False
        wait_for(answers, timeout=20, message='the example backend')
        return url

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield start
    for process in started:
        process.kill()
        process.wait()


def unique(prefix):
    return f'{prefix}-{uuid.uuid4().hex[:10]}'


def test_the_default_client_url_carries_the_hash_of_the_official_build(client_js):
    # The CDN serves the file of the npm package of the same version; same bytes, same hash.
    assert '4.8.1' in (client_js.parent.parent / 'package.json').read_text()
    assert sri(client_js) == DEFAULT_CLIENT_INTEGRITY


# The console ------------------------------------------------------------------------

def open_console(page, server, user, transport):
    page.goto(server.url + '/console')
    page.fill('#token', TOKEN)
    page.fill('#user', user)
    page.select_option('#transport', transport)
    page.click('#connect')
    page.wait_for_selector('#state[data-state="connected"]')


@pytest.mark.parametrize('transport', ['polling', 'websocket'])
def test_the_console_registers_receives_and_pushes(page, start_server, cdn, client_js,
                                                   transport):
    server = start_server(env={'SOCKETIO_CLIENT_URL': cdn,
                          'SOCKETIO_CLIENT_INTEGRITY': sri(client_js)})
    user = unique('console')
    open_console(page, server, user, transport)
    assert page.text_content('#transport-name') == transport
    wait_for(lambda: page.text_content('#presence') == '1 online, 1 registered',
             message='presence on the page')

    # From the backend's side: it arrives with its id and time.
    message_id = server.pushed(user, {'text': 'from the backend', 'n': 1})
    item = page.wait_for_selector(f'#messages li[data-id="{message_id}"]')
    assert '"from the backend"' in item.text_content()
    assert page.text_content(f'#messages li[data-id="{message_id}"] time')

    # From the console's own push form, to its own user.
    page.fill('#push-message', '{"text": "from the console"}')
    page.click('#push')
    page.wait_for_selector('#push-result:has-text("sent")')
    sent_id = page.text_content('#push-result').split('"')[1]
    page.wait_for_selector(f'#messages li[data-id="{sent_id}"]:has-text("from the console")')
    assert page.text_content('#transport-name') == transport   # no upgrade when forced
    assert page.text_content('#state') == 'connected'
    if transport == 'websocket':
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / 'console.png')


def test_the_console_shows_the_latest_webhook_calls(page, start_server, cdn, client_js):
    from test_webhooks import Receiver, telling_env
    receiver = Receiver()
    receiver.failing = True
    try:
        server = start_server(env={'SOCKETIO_CLIENT_URL': cdn,
                                   'SOCKETIO_CLIENT_INTEGRITY': sri(client_js),
                                   **telling_env(receiver)})
        open_console(page, server, unique('hooked'), 'websocket')   # user.online
        page.wait_for_selector('#webhook-calls tr[data-outcome="failed"]:has-text("500")')
        assert '1 URL' in page.text_content('#webhook-summary')
        assert 'user.online' in page.text_content('#webhook-calls tbody')
        receiver.failing = False
        page.wait_for_selector('#webhook-calls tr[data-outcome="sent"]:has-text("204")',
                               timeout=20000)
        assert receiver.url in page.text_content('#webhook-calls tbody')
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / 'console-webhooks.png')
    finally:
        receiver.close()


def test_the_console_shows_a_wrong_token_and_keeps_it_out_of_the_url(page, start_server, cdn):
    server = start_server(env={'SOCKETIO_CLIENT_URL': cdn})
    page.goto(server.url + '/console')
    page.fill('#token', 'wrong-token')
    page.click('#connect')
    page.wait_for_selector('#state[data-state="error"]')
    assert 'X-AUTH-TOKEN' in page.text_content('#state-detail')
    assert 'wrong-token' not in page.url
    assert page.evaluate('document.cookie') == ''
    assert page.evaluate('localStorage.length + sessionStorage.length') == 0


def test_the_console_recovers_what_was_pushed_while_the_server_restarted(
        page, start_server, cdn, client_js, redis_server):
    env = {'REDIS_URL': redis_server.url, 'SOCKETIO_CLIENT_URL': cdn,
           'SOCKETIO_CLIENT_INTEGRITY': sri(client_js)}
    first, other = start_server(env=env), start_server(env=env)
    user = unique('console')
    open_console(page, first, user, 'websocket')
    before = first.pushed(user, 'before the restart')
    page.wait_for_selector(f'#messages li[data-id="{before}"]')

    first.stop()
    page.wait_for_selector('#state[data-state="reconnecting"]')
    meanwhile = other.pushed(user, 'while the server was down')
    start_server(env=env, port=first.port)

    page.wait_for_selector('#state[data-state="recovered"]', timeout=30_000)
    page.wait_for_selector(f'#messages li[data-id="{meanwhile}"].replayed')
    assert page.locator('#messages li').count() == 2


# A team's page on another origin (examples/) --------------------------------------------

@pytest.mark.parametrize('transport', ['polling', 'websocket'])
def test_a_page_on_another_origin_receives_and_recovers_after_a_restart(
        page, start_server, cdn, example_backend, redis_server, transport):
    first = start_server(env={'REDIS_URL': redis_server.url})
    other = start_server(env={'REDIS_URL': redis_server.url})
    backend = example_backend(first.url, cdn)
    user = unique('page')
    page.goto(f'{backend}/?user={user}&transport={transport}')
    page.wait_for_selector('#state[data-state="connected"]')
    assert page.text_content('#transport') == transport

    order = requests.post(f'{backend}/orders', params={'user': user}, timeout=10).json()
    page.wait_for_selector(f'#messages li[data-id="{order["messageId"]}"]')

    first.stop()   # SIGTERM: the page's transport drops, the client retries
    meanwhile = other.pushed(user, {'type': 'while-away'})
    start_server(env={'REDIS_URL': redis_server.url}, port=first.port)
    page.wait_for_selector(f'#messages li[data-id="{meanwhile}"]', timeout=30_000)
    page.wait_for_selector('#state[data-state="connected"]')
    assert page.text_content('#transport') == transport
    ids = [li.get_attribute('data-id') for li in page.query_selector_all('#messages li')]
    assert ids == [order['messageId'], meanwhile]


@pytest.mark.parametrize('transport', ['polling', 'websocket'])
def test_an_origin_outside_cors_allowed_origins_is_refused(
        page, start_server, cdn, example_backend, transport):
    server = start_server(env={'CORS_ALLOWED_ORIGINS': 'https://app.example.com'})
    backend = example_backend(server.url, cdn)
    user = unique('page')
    page.goto(f'{backend}/?user={user}&transport={transport}')
    page.wait_for_selector('#state[data-state="error"]')
    assert 'cannot connect' in page.text_content('#state')
    assert server.sessions(user) == {'userId': user, 'online': 0, 'registered': 1}


ORIGINAL_CODE = """
  // The original README's client code, as written there.
  window.received = [];
  var socket = io.connect('%(server)s');
  socket.on('connect', function () {
    socket.emit('register', '%(user)s', '%(connection_id)s');
  });
  socket.on('message', function (message) {
    window.received.push(message);
  });
"""
HIDE_WEBSOCKET = {'available': '', 'hidden': 'window.WebSocket = undefined;'}


def run_original_code(page, server, user, websocket, load_client):
    """The original README's page code, WebSocket available or hidden, with the client
    `load_client(page)` loads; it must register, receive a unicode push, and settle on
    the transport it can use."""
    assert server.register(user, 'tab').status_code == 200
    page.set_content(f'<!doctype html><script>{HIDE_WEBSOCKET[websocket]}</script>')
    load_client(page)
    page.add_script_tag(content=ORIGINAL_CODE % {'server': server.url, 'user': user,
                                                 'connection_id': 'tab'})
    wait_for(lambda: server.sessions(user)['online'] == 1, timeout=20,
             message='the page to register')
    server.pushed(user, {'title': 'é世🚀 from the backend'})
    page.wait_for_function('window.received.length === 1')
    assert page.evaluate('window.received') == [{'title': 'é世🚀 from the backend'}]
    transport = 'websocket' if websocket == 'available' else 'polling'
    page.wait_for_function(f'socket.io.engine.transport.name === "{transport}"')


@pytest.mark.parametrize('websocket', ['available', 'hidden'])
def test_a_page_written_for_the_original_loads_the_client_from_the_server(
        page, start_server, js_modules, websocket):
    client_dir = js_modules / 'socket.io-client' / 'dist'
    server = start_server(env={'SOCKETIO_CLIENT_DIR': str(client_dir)})
    run_original_code(page, server, unique('original'), websocket, lambda page_: (
        page_.add_script_tag(url=f'{server.url}/socket.io/socket.io.js')))


@pytest.mark.parametrize('bundle', ['v1', 'v2'])
@pytest.mark.parametrize('websocket', ['available', 'hidden'])
def test_a_page_bundling_the_original_s_client_line_works_unchanged(
        page, start_server, js_modules, bundle, websocket):
    # socket.io-client 1.7 and 2.5, as pages written for the original bundle them
    # (Engine.IO 3).
    bundle_path = js_modules / f'socket.io-client-{bundle}' / 'dist' / 'socket.io.js'
    run_original_code(page, start_server(), unique('bundle'), websocket,
                      lambda page_: page_.add_script_tag(path=bundle_path))

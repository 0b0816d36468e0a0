"""/socket.io/ before python-engineio: the client script where the original served it."""
import hashlib

import pytest
import requests

from conftest import TOKEN, wait_for
from notification_socketio import create_app
from notification_socketio.config import (CLIENT_CDN, LOCAL_CLIENT_URL, Config,
                                          ConfigError)
from notification_socketio.engineio_front import CLIENT_FILES


@pytest.fixture(scope='module')
def client_dir(js_modules):
    return js_modules / 'socket.io-client' / 'dist'


@pytest.fixture
def served(client_dir):
    """Flask's test client of an app serving the npm package's client builds."""
    return create_app(Config.for_testing(socketio_client_dir=str(client_dir))).test_client()


@pytest.mark.parametrize('name', [*CLIENT_FILES, *(name + '.map' for name in CLIENT_FILES)])
def test_every_client_build_is_served_as_the_npm_package_has_it(served, client_dir, name):
    response = served.get('/socket.io/' + name)
    assert response.status_code == 200
    assert response.get_data() == (client_dir / name).read_bytes()
    assert response.headers['Content-Type'] == (
        'application/json' if name.endswith('.map') else
        'application/javascript; charset=utf-8')
    assert response.headers['Cache-Control'] == 'public, max-age=0'
    assert response.headers['ETag'].strip('"') in hashlib.sha256(
        response.get_data()).hexdigest()


def test_a_browser_that_has_the_client_revalidates_it_with_its_etag(served):
    first = served.get('/socket.io/socket.io.js')
    again = served.get('/socket.io/socket.io.js',
                       headers={'If-None-Match': first.headers['ETag']})
    assert again.status_code == 304 and again.get_data() == b''
    head = served.head('/socket.io/socket.io.min.js')
    assert head.status_code == 200 and head.get_data() == b''


def test_without_a_local_copy_the_client_is_the_cdn_build_of_the_same_version(rest):
    response = rest.get('/socket.io/socket.io.js')
    assert response.status_code == 302
    assert response.headers['Location'] == CLIENT_CDN + 'socket.io.js'
    assert CLIENT_CDN.endswith('/4.8.1/')


def test_serve_client_0_turns_it_off(client_dir):
    app = create_app(Config.for_testing(socketio_client_dir=str(client_dir),
                                        serve_client=False))
    response = app.test_client().get('/socket.io/socket.io.js')
    assert response.status_code == 404 and 'error' in response.json


def test_a_client_dir_without_the_client_is_refused_at_start(tmp_path):
    with pytest.raises(ConfigError, match='SOCKETIO_CLIENT_DIR'):
        Config.from_env({'AUTH_TOKEN': 't', 'SOCKETIO_CLIENT_DIR': str(tmp_path)})


def test_the_console_loads_the_served_copy_when_there_is_one(client_dir):
    config = Config.from_env({'AUTH_TOKEN': TOKEN, 'SOCKETIO_CLIENT_DIR': str(client_dir)})
    assert (config.socketio_client_url, config.socketio_client_integrity) == (
        LOCAL_CLIENT_URL, '')
    response = create_app(config).test_client().get('/console')
    assert f'src="{LOCAL_CLIENT_URL}"' in response.get_data(as_text=True)
    assert "script-src 'nonce-" in response.headers['Content-Security-Policy']
    assert "'self'" in response.headers['Content-Security-Policy'].split(';')[1]
    without = Config.from_env({'AUTH_TOKEN': TOKEN})
    assert without.socketio_client_url.startswith(CLIENT_CDN)
    assert without.socketio_client_integrity.startswith('sha384-')


def test_the_real_server_serves_the_client_beside_socket_io(start_server, client_dir):
    server = start_server(env={'SOCKETIO_CLIENT_DIR': str(client_dir)})
    response = requests.get(server.url + '/socket.io/socket.io.js', timeout=10)
    assert response.status_code == 200
    assert response.content == (client_dir / 'socket.io.js').read_bytes()
    assert requests.get(server.url + '/socket.io/?EIO=4&transport=polling',
                        timeout=10).text.startswith('0{')
    wait_for(lambda: 'served from' in server.log(), message='the start-up line')


def test_the_docker_image_and_the_tests_take_the_client_version_the_server_names():
    import json
    from conftest import ROOT
    from notification_socketio.config import CLIENT_VERSION
    assert f'socket.io-client@{CLIENT_VERSION}' in (ROOT / 'Dockerfile').read_text()
    package = json.loads((ROOT / 'tests' / 'js' / 'package.json').read_text())
    assert package['dependencies']['socket.io-client'] == CLIENT_VERSION


@pytest.mark.parametrize('query', [
    'EIO=4&transport=polling', 'transport=websocket', 'EIO=4', 'EIO=4&transport=',
    'EIO=4&transport=&t=1', 'xtransport=polling', 'EIO=4&transport=polling&sid=a',
    'transp%6Frt=polling', 'transport=%20', 'trans+port=polling', 'transport=+',
    'a=1&&transport=x', 'transport', 'transport=polling;x=1', '',
])
def test_the_transport_check_reads_the_query_as_python_engineio_does(query):
    from urllib.parse import parse_qs

    from notification_socketio.engineio_front import EngineIOFront
    refused = EngineIOFront._refusal({'REQUEST_METHOD': 'GET', 'QUERY_STRING': query})
    assert (refused is None) == ('transport' in parse_qs(query)), query

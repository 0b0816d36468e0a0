"""Signed connection tokens: a page registers with a JWT its backend signed, no REST call.

A token names the user (`sub`) and a connectionId (`jti`) and must expire (`exp`), at most
REGISTRATION_TTL seconds ahead. HS256 tokens are checked with CONNECTION_SECRET; RS256 and
ES256 with CONNECTION_PUBLIC_KEY. The algorithm a token names picks the key, and only
those three with a configured key are accepted: `none`, and an HMAC made with the public
key as its secret, are refused (PyJWT verifies; nothing here parses a signature).
"""
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .validation import InvalidInput, check_id

#: Seconds of clock difference allowed between the backend that signs and this server.
LEEWAY = 30


class InvalidToken(InvalidInput):
    """The token is malformed, expired, forged or of an algorithm not accepted."""


def load_public_key(pem):
    """The public key of a PEM text, and its algorithm; ValueError if it is neither RSA nor EC."""
    try:
        key = load_pem_public_key(pem.replace('\\n', '\n').encode())
    except (ValueError, TypeError) as error:
        raise ValueError(f'not a PEM public key ({error})') from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError('an RSA key of at least 2048 bits is required')
        return key, 'RS256'
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == 'secp256r1':
        return key, 'ES256'
    raise ValueError('only RSA (RS256) and P-256 (ES256) public keys are accepted')


class TokenVerifier:
    """Checks connection tokens against the configured keys."""

    def __init__(self, config, clock=time.time):
        self._keys = {}
        if config.connection_secret:
            self._keys['HS256'] = config.connection_secret
        if config.connection_public_key:
            key, algorithm = load_public_key(config.connection_public_key)
            self._keys[algorithm] = key
        self.max_lifetime = config.registration_ttl
        self._clock = clock

    @property
    def enabled(self):
        """Whether any key is configured; without one every token is refused."""
        return bool(self._keys)

    def verify(self, token):
        """(userId, connectionId, issued at or None) of a valid token; InvalidToken if not."""
        if not self._keys:
            raise InvalidToken('connection tokens are not accepted by this server (no '
                               'CONNECTION_SECRET or CONNECTION_PUBLIC_KEY): register with '
                               'userId and connectionId')
        try:
            algorithm = jwt.get_unverified_header(token).get('alg')
        except jwt.InvalidTokenError:
            raise InvalidToken('the connection token is not a JWT') from None
        key = self._keys.get(algorithm)
        if key is None:
            raise InvalidToken(f'connection tokens signed with {str(algorithm)[:16]!r} are '
                               f'not accepted (accepted: {", ".join(sorted(self._keys))})')
        try:
            claims = jwt.decode(token, key, algorithms=[algorithm], leeway=LEEWAY,
                                options={'require': ['exp', 'sub', 'jti']})
        except jwt.ExpiredSignatureError:
            raise InvalidToken('the connection token has expired') from None
        except jwt.InvalidTokenError as error:
            raise InvalidToken(f'the connection token is not valid ({error})') from None
        if claims['exp'] > self._clock() + self.max_lifetime + LEEWAY:
            raise InvalidToken('the connection token lives too long: its exp may be at '
                               'most REGISTRATION_TTL seconds ahead')
        issued_at = claims.get('iat')
        return (check_id(claims['sub'], 'the token\'s sub (userId)'),
                check_id(claims['jti'], 'the token\'s jti (connectionId)'),
                issued_at if isinstance(issued_at, (int, float)) else None)

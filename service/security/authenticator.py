"""Turn a request's credentials into a `Principal`: API keys, JWTs, or nothing.

Built in the lifespan (it reads key files and may fetch a JWKS) and used by
`AuthenticationMiddleware`. It knows nothing about paths or responses.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx
import structlog

from service.security.api_keys import KeyStore, ReloadableKeyStore, looks_like_api_key
from service.security.jwt import JwtVerifier
from service.security.principal import WILDCARD, AuthFailure, Principal
from service.settings import AuthSettings

log = structlog.get_logger("graphgate.auth")

# Every caller when auth is off (development only): one principal, all scopes.
ANONYMOUS = Principal(tenant="anonymous", subject="anonymous", method="anonymous",
                      scopes=frozenset({WILDCARD}))


class Authenticator:
    def __init__(
        self,
        settings: AuthSettings,
        *,
        keys: ReloadableKeyStore | KeyStore | None = None,
        jwt: JwtVerifier | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.jwt = jwt

    @property
    def required(self) -> bool:
        """Whether requests outside the public paths must carry credentials."""
        return self.settings.enabled

    async def authenticate(self, headers: Iterable[tuple[bytes, bytes]]) -> Principal | None:
        """The verified principal, None when no credentials were sent, AuthFailure if bad."""
        api_key = bearer = None
        seen = 0
        for name, value in headers:
            if name == b"x-api-key":
                api_key = value.decode("latin-1").strip()
                seen += 1
            elif name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer":
                    raise AuthFailure("unsupported_scheme")
                bearer = token.strip()
                seen += 1
        if seen == 2 and bearer is not None and api_key is not None \
                and not looks_like_api_key(api_key) and not looks_like_api_key(bearer):
            # A bearer token beside an X-API-Key that is not one of ours: the LangGraph
            # SDK adds the user's LangSmith key as x-api-key to every request. It names
            # no principal here, so the token alone decides (and the key is never used).
            api_key = None
            seen = 1
        if seen > 1:
            # Two credentials (or a header sent twice, e.g. one added by a proxy) could
            # name two principals; refuse rather than pick one.
            raise AuthFailure("ambiguous_credentials")
        if bearer is not None and looks_like_api_key(bearer):
            # Prometheus and many HTTP clients can only send `Authorization: Bearer`.
            api_key, bearer = bearer, None
        if api_key is not None:
            if self.keys is None:
                raise AuthFailure("api_keys_disabled")
            return self.keys.verify(api_key)
        if bearer is not None:
            if self.jwt is None:
                raise AuthFailure("jwt_disabled")
            return await self.jwt.verify(bearer)
        return None

    def reload(self) -> None:
        """Re-read the API keys file; on error the previous keys stay in force."""
        if isinstance(self.keys, ReloadableKeyStore):
            self.keys.reload()

    async def aclose(self) -> None:
        if self.jwt is not None:
            await self.jwt.aclose()


async def open_authenticator(
    settings: AuthSettings, *, keys: KeyStore | None = None,
    http: httpx.AsyncClient | None = None,
) -> Authenticator:
    """Load key material; raises ConfigError (one line) when it is missing or invalid.

    `keys`, when given, is used as is (already parsed, or the development key); else the
    keys file is read here and re-read by `Authenticator.reload`.
    """
    store: ReloadableKeyStore | KeyStore | None = keys
    if store is None and settings.api_keys_file is not None:
        store = ReloadableKeyStore(settings.api_keys_file)
    jwt = None
    if settings.jwt.enabled:
        jwt = JwtVerifier(settings.jwt, http=http)
        await jwt.start()
    return Authenticator(settings, keys=store, jwt=jwt)

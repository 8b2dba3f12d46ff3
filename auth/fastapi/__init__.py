"""FastAPI integration: a bearer-token dependency with per-route permissions, in the OpenAPI document too.

Install the ``fastapi`` extra (``pip install 'btp-mcp-oauth[fastapi]'``); importing ``auth`` alone
never imports FastAPI. ::

    bearer = BearerAuth(settings)              # the security scheme and the dependency
    app = FastAPI()
    bearer.install(app)                        # RFC 9728 metadata routes, OAuth error bodies

    @app.get("/data")
    async def read(token: Annotated[VerifiedToken, bearer.require("data.read")]) -> ...: ...

    @app.post("/data", dependencies=[bearer.require("data.write")])
    async def write(...) -> ...: ...

The same answers as `auth.BearerAuthMiddleware`: 401 with a bare challenge without a token, 401
``invalid_token``, 403 ``insufficient_scope`` with ``scope=``, 503 with ``Retry-After`` while the
issuer's keys cannot be had; the OpenAPI document shows the scheme and each route's permissions.
"""

from ._bearer import AuthHTTPException, BearerAuth, auth_error_handler

__all__ = ["BearerAuth", "AuthHTTPException", "auth_error_handler"]

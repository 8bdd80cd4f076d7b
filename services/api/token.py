"""`python -m services.api.token --sub alice`: a development token signed with AUTH_JWT_SECRET.

For trying the API on a laptop or in tests; production tokens come from an identity provider
(AUTH_JWKS_URL). Carries `iss`/`aud` when AUTH_ISSUER/AUTH_AUDIENCE are set, so it passes them.
"""

import argparse
import re
import sys
import time

import jwt

from shared.settings import Settings, get_settings

DURATION = re.compile(r"^(\d+)([smhd]?)$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """`3600`, `90s`, `30m`, `12h` or `7d`, in seconds."""
    match = DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 3600, 30m, 12h or 7d")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def mint(settings: Settings, subject: str, ttl_seconds: int, now: float | None = None) -> str:
    """An HS256 token for `subject`, valid for `ttl_seconds` from `now`."""
    if settings.auth_jwt_secret is None:
        raise ValueError("AUTH_JWT_SECRET is not set (in the environment or .env)")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"sub": subject, "iat": issued, "exp": issued + ttl_seconds}
    if settings.auth_issuer is not None:
        claims["iss"] = settings.auth_issuer
    if settings.auth_audience is not None:
        claims["aud"] = settings.auth_audience
    return jwt.encode(claims, settings.auth_jwt_secret.get_secret_value(), algorithm="HS256")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.api.token",
        description="Print a development bearer token signed with AUTH_JWT_SECRET.",
    )
    parser.add_argument("--sub", required=True, help="the user the token is for")
    parser.add_argument(
        "--ttl", type=duration, default="1h", help="how long it is valid: 3600, 30m, 12h, 7d"
    )
    parser.add_argument(
        "--page",
        metavar="URL",
        help="also print the chat page's address with the token, e.g. http://127.0.0.1:8000",
    )
    args = parser.parse_args(argv)
    try:
        token = mint(get_settings(), args.sub, args.ttl)
    except ValueError as error:
        print(f"token: error: {error}", file=sys.stderr)
        return 2
    print(token)
    if args.page:
        print(f"{args.page.rstrip('/')}/#token={token}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Who is asking: the owner every conversation read or write is scoped to.

The JWT `sub` of the request's bearer token (contract "Users"), or `local` when the API runs
open; see `services.api.auth`.
"""

from services.api.auth import BearerUser

current_owner = BearerUser()

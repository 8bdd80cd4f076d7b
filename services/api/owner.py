"""Who is asking: the owner every conversation read or write is scoped to.

Until users exist (contract "Users") the API runs open, with one user, `local`.
"""

from shared.store.documents import LOCAL_OWNER


async def current_owner() -> str:
    return LOCAL_OWNER

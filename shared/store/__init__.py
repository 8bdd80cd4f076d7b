"""MongoDB storage of conversations and messages, split by who writes what.

`database` opens the connection; `documents` holds what every part shares (ids, creation order,
the document <-> `Message` mapping); `conversations` serves the API's reads and stop, `turns`
the API's writes (new turns and their outbox, `summaries` the conversation documents they keep),
`replies` the responder's leases and progress.
"""

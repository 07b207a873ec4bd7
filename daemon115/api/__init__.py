"""The 115 Open API: client, tokens, error table and the sandbox that stands in for it."""

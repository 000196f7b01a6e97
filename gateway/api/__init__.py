"""HTTP API: routes, dependencies, upload parsing and the one error mapping."""

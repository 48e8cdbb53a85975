"""Programs the tests run as processes of their own (on the host, or copied into a container
and run by its /usr/bin/python3), kept as files so that ruff and mypy see them. stdlib only,
unless a program says otherwise."""

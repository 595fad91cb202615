"""The `kitrading` command line: start the mesh, check its health, and call it through the SDK.

Each command group is one module in `kitrading.cli.commands` with a `register(cli)` function that adds
its Click commands; `main` discovers them, so adding a group means adding one file. See docs/cli.md.
"""

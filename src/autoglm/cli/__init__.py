"""The ``autoglm`` command. Thin: parse flags, call the library, print. Each subcommand is one module
here exposing ``register(subparsers)``; :data:`autoglm.cli.main.COMMANDS` lists them."""

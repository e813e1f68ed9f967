"""One module per `metazoo` subcommand: `add_arguments(parser)` and `run(args)`."""

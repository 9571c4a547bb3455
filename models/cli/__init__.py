"""The `rpg` subcommands of the models package: one module per command (argparse and printing;
the work is done by the library modules they call).
"""

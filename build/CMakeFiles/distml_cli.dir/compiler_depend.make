# Empty compiler generated dependencies file for distml_cli.
# This may be replaced when dependencies are built.

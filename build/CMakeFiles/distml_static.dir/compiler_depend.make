# Empty compiler generated dependencies file for distml_static.
# This may be replaced when dependencies are built.

# Empty dependencies file for distml.
# This may be replaced when dependencies are built.

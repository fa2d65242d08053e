# Empty compiler generated dependencies file for dml_core.
# This may be replaced when dependencies are built.

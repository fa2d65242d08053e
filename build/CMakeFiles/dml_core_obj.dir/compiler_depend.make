# Empty compiler generated dependencies file for dml_core_obj.
# This may be replaced when dependencies are built.

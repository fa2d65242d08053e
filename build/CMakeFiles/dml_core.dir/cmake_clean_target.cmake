file(REMOVE_RECURSE
  "libdml_core.a"
)

file(REMOVE_RECURSE
  "libdistml.a"
)

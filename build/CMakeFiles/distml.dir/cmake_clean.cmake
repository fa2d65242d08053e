file(REMOVE_RECURSE
  "libdistml.pdb"
  "libdistml.so"
  "libdistml.so.0"
  "libdistml.so.0.1.0"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/distml.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()

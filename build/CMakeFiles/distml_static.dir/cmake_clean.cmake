file(REMOVE_RECURSE
  "libdistml.a"
  "libdistml.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/distml_static.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()

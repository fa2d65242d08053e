file(REMOVE_RECURSE
  "libdml_core.a"
  "libdml_core.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/dml_core.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()

file(REMOVE_RECURSE
  "CMakeFiles/distml_cli.dir/src/cli/main.c.o"
  "CMakeFiles/distml_cli.dir/src/cli/main.c.o.d"
  "distml"
  "distml.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/distml_cli.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()

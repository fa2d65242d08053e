file(REMOVE_RECURSE
  "CMakeFiles/dml_core_obj.dir/src/core/alloc.c.o"
  "CMakeFiles/dml_core_obj.dir/src/core/alloc.c.o.d"
  "CMakeFiles/dml_core_obj.dir/src/core/error.c.o"
  "CMakeFiles/dml_core_obj.dir/src/core/error.c.o.d"
  "CMakeFiles/dml_core_obj.dir/src/core/file.c.o"
  "CMakeFiles/dml_core_obj.dir/src/core/file.c.o.d"
  "CMakeFiles/dml_core_obj.dir/src/core/jsonl.c.o"
  "CMakeFiles/dml_core_obj.dir/src/core/jsonl.c.o.d"
  "CMakeFiles/dml_core_obj.dir/src/core/log.c.o"
  "CMakeFiles/dml_core_obj.dir/src/core/log.c.o.d"
  "CMakeFiles/dml_core_obj.dir/src/core/parse.c.o"
  "CMakeFiles/dml_core_obj.dir/src/core/parse.c.o.d"
  "CMakeFiles/dml_core_obj.dir/src/core/progress.c.o"
  "CMakeFiles/dml_core_obj.dir/src/core/progress.c.o.d"
  "CMakeFiles/dml_core_obj.dir/src/core/rng.c.o"
  "CMakeFiles/dml_core_obj.dir/src/core/rng.c.o.d"
  "CMakeFiles/dml_core_obj.dir/src/core/time.c.o"
  "CMakeFiles/dml_core_obj.dir/src/core/time.c.o.d"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/dml_core_obj.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()

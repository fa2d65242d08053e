
# Consider dependencies only in project.
set(CMAKE_DEPENDS_IN_PROJECT_ONLY OFF)

# The set of languages for which implicit dependencies are needed:
set(CMAKE_DEPENDS_LANGUAGES
  )

# The set of dependency files which are needed:
set(CMAKE_DEPENDS_DEPENDENCY_FILES
  "/work/main/src/core/alloc.c" "CMakeFiles/dml_core_obj.dir/src/core/alloc.c.o" "gcc" "CMakeFiles/dml_core_obj.dir/src/core/alloc.c.o.d"
  "/work/main/src/core/error.c" "CMakeFiles/dml_core_obj.dir/src/core/error.c.o" "gcc" "CMakeFiles/dml_core_obj.dir/src/core/error.c.o.d"
  "/work/main/src/core/file.c" "CMakeFiles/dml_core_obj.dir/src/core/file.c.o" "gcc" "CMakeFiles/dml_core_obj.dir/src/core/file.c.o.d"
  "/work/main/src/core/jsonl.c" "CMakeFiles/dml_core_obj.dir/src/core/jsonl.c.o" "gcc" "CMakeFiles/dml_core_obj.dir/src/core/jsonl.c.o.d"
  "/work/main/src/core/log.c" "CMakeFiles/dml_core_obj.dir/src/core/log.c.o" "gcc" "CMakeFiles/dml_core_obj.dir/src/core/log.c.o.d"
  "/work/main/src/core/parse.c" "CMakeFiles/dml_core_obj.dir/src/core/parse.c.o" "gcc" "CMakeFiles/dml_core_obj.dir/src/core/parse.c.o.d"
  "/work/main/src/core/progress.c" "CMakeFiles/dml_core_obj.dir/src/core/progress.c.o" "gcc" "CMakeFiles/dml_core_obj.dir/src/core/progress.c.o.d"
  "/work/main/src/core/rng.c" "CMakeFiles/dml_core_obj.dir/src/core/rng.c.o" "gcc" "CMakeFiles/dml_core_obj.dir/src/core/rng.c.o.d"
  "/work/main/src/core/time.c" "CMakeFiles/dml_core_obj.dir/src/core/time.c.o" "gcc" "CMakeFiles/dml_core_obj.dir/src/core/time.c.o.d"
  )

# Targets to which this target links.
set(CMAKE_TARGET_LINKED_INFO_FILES
  )

# Fortran module output directory.
set(CMAKE_Fortran_TARGET_MODULE_DIR "")

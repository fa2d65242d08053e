# One place that turns files into CTest tests and fuzz targets (nng's NNGHelpers.cmake idea).
#  - src/<layer>/<name>_test.c and tests/test_<name>.c : a C test program, linked with libdistml
#    and tests/testutil.h; passes when it exits 0.
#  - tests/test_<name>.sh : a shell test run with bash; gets DISTML (the CLI's path),
#    DISTML_SRC and DISTML_BUILD in its environment.
#  - fuzz/fuzz_<name>.c : a libFuzzer target (with DISTML_FUZZ=ON, clang), also registered as a
#    short bounded CTest run (fixed seed and run count) on its corpus in fuzz/corpus/<name>/.
# A test file may carry a line "test-labels: a b c" (in a comment) to give its CTest labels:
#   slow  trains on real data (skipped under the sanitizers), mpi  runs under mpirun,
#   tsan  threaded: also run in the ThreadSanitizer build.
#   install  builds a program against the installed library (not in the sanitizer builds).

function(distml_labels name src)
  file(STRINGS ${src} line REGEX "test-labels:" LIMIT_COUNT 1)
  if(line)
    string(REGEX REPLACE ".*test-labels:[ ]*([a-z ]*).*" "\\1" labels "${line}")
    string(STRIP "${labels}" labels)
    string(REPLACE " " ";" labels "${labels}")
    set_tests_properties(${name} PROPERTIES LABELS "${labels}")
  endif()
endfunction()

# lib: the library the test links (dml_<layer> for a unit test, distml_static for tests/).
function(distml_add_c_test name src lib)
  add_executable(${name} ${src})
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_SOURCE_DIR}/tests)
  target_link_libraries(${name} PRIVATE ${lib})
  if(lib STREQUAL "distml_static")
    add_dependencies(${name} distml_cli)
  endif()
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES TIMEOUT 600
    ENVIRONMENT "DISTML=$<TARGET_FILE:distml_cli>;DISTML_SRC=${CMAKE_SOURCE_DIR};DISTML_BUILD=${CMAKE_BINARY_DIR}")
  distml_labels(${name} ${src})
endfunction()

function(distml_register_tests)
  file(GLOB unit CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/src/*/*_test.c)
  foreach(src ${unit})
    get_filename_component(name ${src} NAME_WE)
    get_filename_component(dir ${src} DIRECTORY)
    get_filename_component(layer ${dir} NAME)
    if(layer STREQUAL "cli")
      distml_add_c_test(${name} ${src} distml_static)
    else()
      distml_add_c_test(${name} ${src} dml_${layer})
    endif()
  endforeach()
  file(GLOB ctests CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/test_*.c)
  foreach(src ${ctests})
    get_filename_component(name ${src} NAME_WE)
    distml_add_c_test(${name} ${src} distml_static)
  endforeach()
  file(GLOB shtests CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/test_*.sh)
  foreach(src ${shtests})
    get_filename_component(name ${src} NAME_WE)
    add_test(NAME ${name} COMMAND bash ${src})
    set_tests_properties(${name} PROPERTIES TIMEOUT 900
      ENVIRONMENT "DISTML=$<TARGET_FILE:distml_cli>;DISTML_SRC=${CMAKE_SOURCE_DIR};DISTML_BUILD=${CMAKE_BINARY_DIR}")
    distml_labels(${name} ${src})
  endforeach()
endfunction()

function(distml_register_fuzzers)
  file(GLOB fuzzers CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/fuzz/fuzz_*.c)
  foreach(src ${fuzzers})
    get_filename_component(name ${src} NAME_WE)
    string(REPLACE "fuzz_" "" short ${name})
    add_executable(${name} ${src})
    target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/src)
    target_compile_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_libraries(${name} PRIVATE distml_static)
    set(corpus ${CMAKE_SOURCE_DIR}/fuzz/corpus/${short})
    # A fixed seed and run count make the CI run reproducible (what passes here passes there);
    # the time cap bounds it on a slow machine (the runs done are then a prefix of the same ones).
    add_test(NAME ${name} COMMAND ${name} -seed=1 -runs=1000000 -max_total_time=60 -rss_limit_mb=2048
             -max_len=65536 ${CMAKE_BINARY_DIR}/fuzz-work-${short} ${corpus})
    set_tests_properties(${name} PROPERTIES TIMEOUT 120 LABELS fuzz)
    file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz-work-${short})
  endforeach()
endfunction()

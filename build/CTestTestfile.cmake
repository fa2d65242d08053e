# CMake generated Testfile for 
# Source directory: /work/main
# Build directory: /work/main/build
# 
# This file includes the relevant testing commands required for 
# testing this directory and lists subdirectories to be tested as well.
add_test([=[core_test]=] "/work/main/build/core_test")
set_tests_properties([=[core_test]=] PROPERTIES  ENVIRONMENT "DISTML=/work/main/build/distml;DISTML_SRC=/work/main;DISTML_BUILD=/work/main/build" TIMEOUT "600" _BACKTRACE_TRIPLES "/work/main/cmake/DistmlHelpers.cmake;16;add_test;/work/main/cmake/DistmlHelpers.cmake;30;distml_add_c_test;/work/main/CMakeLists.txt;125;distml_register_tests;/work/main/CMakeLists.txt;0;")

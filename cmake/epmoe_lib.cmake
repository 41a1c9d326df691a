# SPDX-License-Identifier: Apache-2.0
# Helpers shared by the per-part CMakeLists.txt files (runtime/base, kernels,
# comm, runtime, daemon). Each part is one target with an explicit source list
# and its own folder as its only private include dir; the allowed edges between
# parts are checked by the `layering` test (tests/layering.cmake).

# epm_part_sources(OUT COMMON common... CUDA cuda_only... NOCUDA nocuda_only...)
# Picks the sources of this build flavour: the CUDA list only when CUDA is
# built, the NOCUDA list (stubs answering EPM_ERR_NOT_SUPPORTED) otherwise. A
# listed file that is missing stops the configure (add_library checks).
function(epm_part_sources out)
  cmake_parse_arguments(S "" "" "COMMON;CUDA;NOCUDA" ${ARGN})
  set(_src ${S_COMMON})
  if(EPMOE_HAVE_CUDA)
    list(APPEND _src ${S_CUDA})
  else()
    list(APPEND _src ${S_NOCUDA})
  endif()
  set(${out} ${_src} PARENT_SCOPE)
endfunction()

# epm_part(NAME sources...): a static library for one part.
function(epm_part name)
  add_library(${name} STATIC ${ARGN})
  target_include_directories(${name} PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
                                            $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
                                     PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_compile_definitions(${name} PUBLIC EPMOE_VERSION_STRING="${PROJECT_VERSION}")
  if(EPMOE_HAVE_CUDA)
    target_compile_definitions(${name} PUBLIC EPMOE_HAVE_CUDA=1)
  endif()
  # The client shared library links base; every part stays PIC so any of them
  # can go into a shared object.
  set_target_properties(${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
endfunction()

# epm_install_lib(TARGET NAME EXPORT_SET): install one part's library and put
# it in the CMake package as epmoe::NAME (cmake/epmoe_install.cmake writes the
# package). Two export sets: epmoeClientTargets (the client .so, no MPI) and
# epmoeRuntimeTargets (the static parts, which need MPI, jansson, ...), so an
# engine that only talks to a daemon can find_package(epmoe COMPONENTS client)
# on a machine without MPI.
function(epm_install_lib target name set)
  set_target_properties(${target} PROPERTIES EXPORT_NAME ${name})
  install(TARGETS ${target} EXPORT ${set}
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
          RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endfunction()

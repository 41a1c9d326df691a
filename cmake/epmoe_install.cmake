# SPDX-License-Identifier: Apache-2.0
# `cmake --install build --prefix P` (docs/DEPLOY.md "Install"):
#   P/bin/epmoed, P/bin/epmoectl                      the programs
#   P/LIBDIR/libepmoe_client.so.X.Y (+ .so link)      the client library (SONAME)
#   P/LIBDIR/libepmoe_{runtime,comm,kernels,base}.a   the runtime, static
#   P/include/epmoe/*.h                               the public headers
#   P/LIBDIR/pkgconfig/epmoe-client.pc, epmoe.pc      pkg-config
#   P/LIBDIR/cmake/epmoe/                             find_package(epmoe):
#        epmoe::client (no MPI needed), epmoe::runtime (+ comm, kernels, base)
#   P/share/epmoe/deploy/                             the launch recipes
#   P/share/doc/epmoe/LICENSE
# Every installed file is relocatable: the .pc files find their prefix from
# their own folder (${pcfiledir}) and the CMake package from its own location,
# so a prefix copied elsewhere (a container stage) keeps working.
include(CMakePackageConfigHelpers)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/epmoe DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h")
install(FILES ${PROJECT_SOURCE_DIR}/LICENSE DESTINATION ${CMAKE_INSTALL_DOCDIR})

# ---- pkg-config ---------------------------------------------------------------
# The prefix as seen from LIBDIR/pkgconfig ("../.." for lib, "../../.." for
# Debian's lib/<multiarch>).
file(RELATIVE_PATH _epm_pc_up "/x/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/x")
set(EPM_PC_PREFIX "\${pcfiledir}/${_epm_pc_up}")
set(EPM_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
set(EPM_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")

# The runtime's parts are static archives, so epmoe.pc lists everything they
# need on the link line: MPI (as this build found it: any MPI, not only one
# that ships a .pc file), OpenMP, libm, pthreads and, in CUDA builds, cudart,
# NCCL and libstdc++. jansson has its own .pc file.
set(_epm_libs -lepmoe_runtime -lepmoe_comm -lepmoe_kernels -lepmoe_base)
if(EPMOE_HAVE_CUDA)
  # The kernels' host code is C++ (nvcc's host compiler): its runtime too.
  list(APPEND _epm_libs ${CUDA_cudart_LIBRARY} ${NCCL_LIBRARY} -lstdc++)
endif()
list(APPEND _epm_libs ${MPI_C_LINK_FLAGS} ${MPI_C_LIBRARIES})
if(OpenMP_C_FOUND)
  list(APPEND _epm_libs ${OpenMP_C_FLAGS})
endif()
list(APPEND _epm_libs -lm -pthread)
# Shared libraries named by absolute path outside the linker's own dirs (CUDA,
# NCCL, some MPIs) also need to be found at run time: add their dirs as RPATH.
foreach(_l IN LISTS _epm_libs)
  if(IS_ABSOLUTE "${_l}")
    get_filename_component(_d "${_l}" DIRECTORY)
    if(NOT _d IN_LIST CMAKE_C_IMPLICIT_LINK_DIRECTORIES AND NOT "-Wl,-rpath,${_d}" IN_LIST _epm_libs)
      list(APPEND _epm_libs "-Wl,-rpath,${_d}")
    endif()
  endif()
endforeach()
list(JOIN _epm_libs " " EPM_PC_RUNTIME_LIBS)
configure_file(${CMAKE_CURRENT_LIST_DIR}/epmoe.pc.in ${PROJECT_BINARY_DIR}/pkgconfig/epmoe.pc @ONLY)
configure_file(${CMAKE_CURRENT_LIST_DIR}/epmoe-client.pc.in ${PROJECT_BINARY_DIR}/pkgconfig/epmoe-client.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/pkgconfig/epmoe.pc ${PROJECT_BINARY_DIR}/pkgconfig/epmoe-client.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# ---- CMake package --------------------------------------------------------------
if(EPMOE_HAVE_CUDA)
  # Inside this build CMake links the kernels with the CUDA linker; a consumer
  # project in plain C links with the C linker, which leaves out the C++
  # runtime that nvcc's host code needs.
  target_link_libraries(epmoe_kernels INTERFACE $<INSTALL_INTERFACE:stdc++>)
endif()
set(_epm_cmakedir ${CMAKE_INSTALL_LIBDIR}/cmake/epmoe)
install(EXPORT epmoeClientTargets NAMESPACE epmoe:: DESTINATION ${_epm_cmakedir})
install(EXPORT epmoeRuntimeTargets NAMESPACE epmoe:: DESTINATION ${_epm_cmakedir})
set(EPM_CFG_OPENMP ${OpenMP_C_FOUND})
set(EPM_CFG_CUDA ${EPMOE_HAVE_CUDA})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/epmoeConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/cmake/epmoeConfig.cmake
                              INSTALL_DESTINATION ${_epm_cmakedir})
# 0.x: the SONAME carries major.minor, so only the same minor version is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/cmake/epmoeConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/cmake/epmoeConfig.cmake ${PROJECT_BINARY_DIR}/cmake/epmoeConfigVersion.cmake
        DESTINATION ${_epm_cmakedir})

# ---- launch recipes (the container image and the docs point at these) ----------
install(PROGRAMS ${PROJECT_SOURCE_DIR}/deploy/slurm/epmoed.sbatch
        DESTINATION ${CMAKE_INSTALL_DATADIR}/epmoe/deploy/slurm)
install(PROGRAMS ${PROJECT_SOURCE_DIR}/deploy/k8s/epmoe-launch.sh
        DESTINATION ${CMAKE_INSTALL_DATADIR}/epmoe/deploy/k8s)
install(FILES ${PROJECT_SOURCE_DIR}/deploy/k8s/mpijob.yaml
        DESTINATION ${CMAKE_INSTALL_DATADIR}/epmoe/deploy/k8s)
install(FILES ${PROJECT_SOURCE_DIR}/deploy/systemd/epmoe@.service ${PROJECT_SOURCE_DIR}/deploy/systemd/example.env
              ${PROJECT_SOURCE_DIR}/deploy/systemd/epmoe.sysusers.conf
              ${PROJECT_SOURCE_DIR}/deploy/systemd/epmoe.tmpfiles.conf
        DESTINATION ${CMAKE_INSTALL_DATADIR}/epmoe/deploy/systemd)

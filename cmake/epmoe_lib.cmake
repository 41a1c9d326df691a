# libepmoe: runtime/, comm/ and kernels/ in one static library.
# Naming convention picks sources by build flavour, so each area can add
# files without editing this list:
#   *_cuda.c, *_nccl.c, *.cu   only when CUDA is built (EPMOE_HAVE_CUDA)
#   *_nocuda.c                 only when it is not (stubs returning NOT_SUPPORTED)
file(GLOB _epm_c CONFIGURE_DEPENDS
     ${PROJECT_SOURCE_DIR}/runtime/base/*.c
     ${PROJECT_SOURCE_DIR}/runtime/*.c
     ${PROJECT_SOURCE_DIR}/comm/*.c
     ${PROJECT_SOURCE_DIR}/kernels/*.c)
set(_epm_src)
foreach(f ${_epm_c})
  if(f MATCHES "_(cuda|nccl)\\.c$")
    if(EPMOE_HAVE_CUDA)
      list(APPEND _epm_src ${f})
    endif()
  elseif(f MATCHES "_nocuda\\.c$")
    if(NOT EPMOE_HAVE_CUDA)
      list(APPEND _epm_src ${f})
    endif()
  else()
    list(APPEND _epm_src ${f})
  endif()
endforeach()
if(EPMOE_HAVE_CUDA)
  file(GLOB _epm_cu CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/kernels/*.cu)
  list(APPEND _epm_src ${_epm_cu})
endif()

add_library(epmoe STATIC ${_epm_src})
target_include_directories(epmoe PUBLIC ${PROJECT_SOURCE_DIR}/include
                                  PRIVATE ${PROJECT_SOURCE_DIR}/runtime
                                          ${PROJECT_SOURCE_DIR}/comm
                                          ${PROJECT_SOURCE_DIR}/kernels)
target_link_libraries(epmoe PUBLIC MPI::MPI_C Threads::Threads PkgConfig::JANSSON)
if(EPMOE_LIBM)
  target_link_libraries(epmoe PUBLIC ${EPMOE_LIBM})
endif()
if(OpenMP_C_FOUND)
  target_link_libraries(epmoe PUBLIC OpenMP::OpenMP_C)
endif()
target_compile_definitions(epmoe PUBLIC EPMOE_VERSION_STRING="${PROJECT_VERSION}")
if(EPMOE_HAVE_CUDA)
  target_compile_definitions(epmoe PUBLIC EPMOE_HAVE_CUDA=1)
  target_include_directories(epmoe PRIVATE ${NCCL_INCLUDE_DIR})
  # cudart only: libcuda is loaded by cudart at run time, so binaries still
  # start on machines without a driver (CI) and report "no GPU" cleanly.
  target_link_libraries(epmoe PUBLIC CUDA::cudart ${NCCL_LIBRARY})
  target_compile_options(epmoe PRIVATE
    "$<$<COMPILE_LANGUAGE:CUDA>:${EPMOE_CUDA_ARCH_FLAGS};-lineinfo;--expt-relaxed-constexpr;-Xcompiler=-Wall>")
  set_target_properties(epmoe PROPERTIES CUDA_SEPARABLE_COMPILATION OFF POSITION_INDEPENDENT_CODE ON)
endif()

# Size-planning code compiles with -Wconversion; files opt in by name.
file(GLOB _epm_sized CONFIGURE_DEPENDS
     ${PROJECT_SOURCE_DIR}/runtime/plan*.c
     ${PROJECT_SOURCE_DIR}/runtime/nvfp4*.c
     ${PROJECT_SOURCE_DIR}/kernels/*_plan.c
     ${PROJECT_SOURCE_DIR}/comm/*_chunk*.c)
if(_epm_sized)
  set_source_files_properties(${_epm_sized} PROPERTIES COMPILE_OPTIONS "${EPMOE_SIZE_FLAGS}")
endif()

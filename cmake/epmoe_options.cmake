# SPDX-License-Identifier: Apache-2.0
# Compiler flags shared by every target: warnings, asserts kept, sanitizers.
add_compile_options(
  "$<$<COMPILE_LANGUAGE:C>:-Wall;-Wextra;-Wshadow;-Wno-unused-parameter;-Wvla;-Wno-format-truncation;-Wconversion;-Wsign-conversion>"
  "$<$<COMPILE_LANGUAGE:CXX>:-Wall;-Wextra;-Wno-unused-parameter>")
# Keep assert() on in every build type (tests and MOE invariants rely on it).
string(REPLACE "-DNDEBUG" "" CMAKE_C_FLAGS_RELWITHDEBINFO "${CMAKE_C_FLAGS_RELWITHDEBINFO}")
string(REPLACE "-DNDEBUG" "" CMAKE_C_FLAGS_RELEASE "${CMAKE_C_FLAGS_RELEASE}")
if(EPMOE_WERROR)
  add_compile_options("$<$<COMPILE_LANGUAGE:C>:-Werror>")
endif()

if(EPMOE_SANITIZE)
  set(_san "-fsanitize=${EPMOE_SANITIZE}")
  if(EPMOE_SANITIZE MATCHES "undefined")
    string(APPEND _san ",signed-integer-overflow")
  endif()
  set(EPMOE_SAN_FLAGS ${_san} -fno-sanitize-recover=all -fno-omit-frame-pointer)
  add_compile_options("$<$<COMPILE_LANGUAGE:C,CXX>:${EPMOE_SAN_FLAGS}>")
  add_link_options(${EPMOE_SAN_FLAGS})
  message(STATUS "epmoe: sanitizers ${EPMOE_SANITIZE}")
endif()


# unmaskConfig.cmake - CMake package of libunmask, installed by ffi/install.sh into
# <prefix>/lib/cmake/unmask/. Relocatable: paths are relative to this file.
#
#   find_package(unmask REQUIRED)            # with -DCMAKE_PREFIX_PATH=<prefix>
#   target_link_libraries(app PRIVATE unmask::unmask)         # shared library
#   target_link_libraries(app PRIVATE unmask::unmask_static)  # static library + its system libs

include(CMakeFindDependencyMacro)
find_dependency(Threads)

get_filename_component(_unmask_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)

if(NOT TARGET unmask::unmask)
    add_library(unmask::unmask SHARED IMPORTED)
    set_target_properties(unmask::unmask PROPERTIES
        IMPORTED_LOCATION "${_unmask_prefix}/lib/${CMAKE_SHARED_LIBRARY_PREFIX}unmask${CMAKE_SHARED_LIBRARY_SUFFIX}"
        INTERFACE_INCLUDE_DIRECTORIES "${_unmask_prefix}/include")
endif()

if(NOT TARGET unmask::unmask_static)
    add_library(unmask::unmask_static STATIC IMPORTED)
    # The static library bundles ggml (C++) and the Rust standard library: link what they need.
    set(_unmask_private stdc++ Threads::Threads m ${CMAKE_DL_LIBS})
    if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
        list(APPEND _unmask_private gcc_s util rt)
    endif()
    set_target_properties(unmask::unmask_static PROPERTIES
        IMPORTED_LOCATION "${_unmask_prefix}/lib/${CMAKE_STATIC_LIBRARY_PREFIX}unmask${CMAKE_STATIC_LIBRARY_SUFFIX}"
        INTERFACE_INCLUDE_DIRECTORIES "${_unmask_prefix}/include"
        INTERFACE_COMPILE_DEFINITIONS "UNMASK_STATIC"
        INTERFACE_LINK_LIBRARIES "${_unmask_private}")
    unset(_unmask_private)
endif()

unset(_unmask_prefix)

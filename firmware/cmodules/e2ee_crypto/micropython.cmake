# `_e2ee_crypto` for CMake-based ports (esp32, rp2):
#   idf.py -D USER_C_MODULES=/path/to/e2ee-iot/firmware/cmodules/micropython.cmake build
#   cmake -DUSER_C_MODULES=/path/to/e2ee-iot/firmware/cmodules/micropython.cmake ...
# Monocypher is not in the repository: `scripts/build-cmodule --fetch-only` puts the pinned,
# hash-checked sources in build/monocypher/ (-DE2EE_MONOCYPHER_DIR=... overrides).
# See boards/README.md.
if(NOT E2EE_MONOCYPHER_DIR)
    get_filename_component(E2EE_MONOCYPHER_DIR ${CMAKE_CURRENT_LIST_DIR}/../../../build/monocypher ABSOLUTE)
endif()
if(NOT EXISTS ${E2EE_MONOCYPHER_DIR}/monocypher.c)
    message(FATAL_ERROR "_e2ee_crypto: no Monocypher in ${E2EE_MONOCYPHER_DIR}; run scripts/build-cmodule --fetch-only")
endif()

add_library(usermod_e2ee_crypto INTERFACE)
target_sources(usermod_e2ee_crypto INTERFACE
    ${CMAKE_CURRENT_LIST_DIR}/mod_e2ee_crypto.c
    ${CMAKE_CURRENT_LIST_DIR}/e2ee_core.c
    ${CMAKE_CURRENT_LIST_DIR}/sha512.c
    ${CMAKE_CURRENT_LIST_DIR}/monocypher_unit.c
)
target_include_directories(usermod_e2ee_crypto INTERFACE
    ${CMAKE_CURRENT_LIST_DIR}
    ${E2EE_MONOCYPHER_DIR}
)
target_link_libraries(usermod INTERFACE usermod_e2ee_crypto)

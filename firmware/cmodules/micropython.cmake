# User C modules of e2ee-iot, for CMake-based ports: pass this file as USER_C_MODULES.
include(${CMAKE_CURRENT_LIST_DIR}/e2ee_crypto/micropython.cmake)

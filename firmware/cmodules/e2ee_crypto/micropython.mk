# `_e2ee_crypto` for make-based ports (unix, rp2's legacy make path):
#   make -C ports/unix USER_C_MODULES=/path/to/e2ee-iot/firmware/cmodules
# Monocypher is not in the repository: `scripts/build-cmodule --fetch-only` puts the pinned,
# hash-checked sources in build/monocypher/ (E2EE_MONOCYPHER_DIR overrides). See boards/README.md.
E2EE_CRYPTO_DIR := $(USERMOD_DIR)
E2EE_MONOCYPHER_DIR ?= $(abspath $(E2EE_CRYPTO_DIR)/../../../build/monocypher)

ifeq ($(wildcard $(E2EE_MONOCYPHER_DIR)/monocypher.c),)
$(error _e2ee_crypto: no Monocypher in $(E2EE_MONOCYPHER_DIR); run scripts/build-cmodule --fetch-only)
endif

# The binding is scanned for qstrs; the core and Monocypher are plain library code.
SRC_USERMOD_C += $(E2EE_CRYPTO_DIR)/mod_e2ee_crypto.c
SRC_USERMOD_LIB_C += $(E2EE_CRYPTO_DIR)/e2ee_core.c \
	$(E2EE_CRYPTO_DIR)/sha512.c \
	$(E2EE_CRYPTO_DIR)/monocypher_unit.c
CFLAGS_USERMOD += -I$(E2EE_CRYPTO_DIR) -I$(E2EE_MONOCYPHER_DIR)

# Viper-accelerated MicroPython backend: 32-bit-word arithmetic that is exact on 32-bit boards.

# The protocol core shared by device and host: keys, X3DH, Double Ratchet, envelope, sessions.

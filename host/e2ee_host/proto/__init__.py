"""Generated protobuf code, checked in on purpose (see e2ee_host/envelope.py). Do not edit: regenerate."""

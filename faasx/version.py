"""faasx's version, and the wire protocol version that managers and clients must share."""
VERSION = "0.1.0"
